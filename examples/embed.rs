//! Emberbase inside your own program: start it in-process, add a route of your own, use the
//! document API without HTTP, and watch the change feed.
//!
//! ```sh
//! cargo run --example embed
//! curl http://127.0.0.1:7070/hello
//! ```

use emberbase::{Config, Principal, ServerBuilder};
use serde_json::json;

async fn hello() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(json!({"hello": "from the host program"}))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let server = ServerBuilder::new(Config::default())
        .data_dir("./embed_data")
        .bind("127.0.0.1:7070")
        .routes(|cfg| {
            cfg.route("/hello", actix_web::web::get().to(hello));
        })
        .start()
        .await?;

    // Every committed change, in commit order, from any path (HTTP or in-process).
    let mut changes = server.changes().subscribe();
    tokio::spawn(async move {
        while let Ok(change) = changes.recv().await {
            println!(
                "change #{}: {} {}",
                change.seq,
                change.kind.as_str(),
                change.subject
            );
        }
    });

    // The in-process API has the same semantics as HTTP; the service principal is an admin.
    let docs = server.documents();
    let post = docs
        .create(
            &Principal::Service,
            "posts",
            json!({"title": "written in-process"}),
        )
        .await?;
    println!("created {} at version {}", post.id, post.version);

    println!(
        "listening on http://{} (Ctrl-C to stop)",
        server.local_addr()
    );
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
