//! The admin console at `/_/`: the single-page app built from `console/` (Vite), embedded in the
//! binary from `console/dist`, so that the server needs nothing else to show it.
//!
//! Every console response forbids framing and sniffing. Hashed assets (`/_/assets/…`) are
//! cached for a year. Any other path under `/_/` is a route of the app and gets `index.html`,
//! never cached, with a Content-Security-Policy that allows only the server's own scripts (no
//! inline script at all) and styles from the server's files or carrying the nonce made for this
//! response: the page hands it to the editor (CodeMirror), which makes its styles at run time.

use crate::error::Error;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpResponse};
use base64::Engine;
use include_dir::{include_dir, Dir};

static DIST: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/console/dist");

/// Where the nonce goes in the built `index.html` (`console/index.html`).
const NONCE_SLOT: &str = "__CSP_NONCE__";

/// Adds the console's routes (outside the OpenAPI document: they are a web page, not the API).
pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/_", web::get().to(to_console))
        .route("/_", web::head().to(to_console))
        .route("/_/{path:.*}", web::get().to(serve))
        .route("/_/{path:.*}", web::head().to(serve));
}

async fn to_console() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/_/"))
        .finish()
}

async fn serve(path: web::Path<String>) -> Result<HttpResponse, Error> {
    let path = path.into_inner();
    if let Some(asset) = path.strip_prefix("assets/") {
        let file = DIST
            .get_file(format!("assets/{asset}"))
            .ok_or_else(|| Error::not_found(format!("the console has no file {path:?}")))?;
        return Ok(guarded(HttpResponse::Ok())
            .insert_header((header::CONTENT_TYPE, content_type(&path)))
            .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
            .body(file.contents()));
    }
    // A file name outside assets/ (a favicon, a mistyped asset) is not a route of the app.
    if path
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains('.'))
    {
        return Err(Error::not_found(format!(
            "the console has no file {path:?}"
        )));
    }
    let index = DIST
        .get_file("index.html")
        .and_then(|f| f.contents_utf8())
        .ok_or_else(|| Error::internal("the console's index.html is missing from the build"))?;
    let nonce = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 18]>());
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; \
         img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; \
         font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    Ok(guarded(HttpResponse::Ok())
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_SECURITY_POLICY, policy))
        .body(index.replace(NONCE_SLOT, &nonce)))
}

/// The headers every console response carries.
fn guarded(mut builder: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    builder
        .insert_header((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    builder
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "json" | "map" => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_build_has_an_index_with_a_nonce_slot_and_its_assets() {
        let index = super::DIST
            .get_file("index.html")
            .and_then(|f| f.contents_utf8())
            .expect("console/dist/index.html");
        assert!(index.contains(super::NONCE_SLOT));
        for src in index.split("/_/").skip(1) {
            let file = src.split('"').next().unwrap_or_default();
            assert!(super::DIST.get_file(file).is_some(), "{file} is missing");
        }
    }
}
