//! The ceiling for the load harness: a bare actix-web JSON endpoint with no storage, no auth
//! and no middleware, and the receiver of its webhook loads (`POST /hook` answers 204).
//! `cargo run --release --example bare_actix -- 127.0.0.1:7090`

use actix_web::{get, post, App, HttpResponse, HttpServer};

#[get("/v1/health")]
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok", "version": "bare"}))
}

#[post("/hook")]
async fn hook() -> HttpResponse {
    HttpResponse::NoContent().finish()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7090".into());
    HttpServer::new(|| App::new().service(health).service(hook))
        .bind(addr)?
        .run()
        .await
}
