//! The ceiling for the load harness: a bare actix-web JSON endpoint with no storage, no auth
//! and no middleware. `cargo run --release --example bare_actix -- 127.0.0.1:7090`

use actix_web::{get, App, HttpResponse, HttpServer};

#[get("/v1/health")]
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok", "version": "bare"}))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7090".into());
    HttpServer::new(|| App::new().service(health))
        .bind(addr)?
        .run()
        .await
}
