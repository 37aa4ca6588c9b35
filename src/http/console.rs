//! The web console at `/console/`: plain HTML, CSS and JavaScript (`console/` in the repository),
//! embedded in the binary. It uses only the public HTTP API with the credential it is given.
//!
//! The index is served `no-store`, the assets under names that carry a hash of their content with a
//! year of caching; everything with a strict Content-Security-Policy (no inline script, nothing from
//! elsewhere). All URLs are relative, so the console works behind a path prefix. `CONSOLE=off`
//! removes the routes.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::{ApiError, AppState};

const INDEX: &str = include_str!("../../console/index.html");
const APP_JS: &[u8] = include_bytes!("../../console/app.js");
const STYLE_CSS: &[u8] = include_bytes!("../../console/style.css");

/// No inline script or style, nothing from another origin, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";

struct Asset {
    /// `app.<hash>.js`: a new build of the console is a new name.
    name: String,
    bytes: &'static [u8],
    content_type: &'static str,
}

struct Console {
    index: String,
    assets: Vec<Asset>,
}

fn hashed(stem: &str, ext: &str, bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let hex: String = digest.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{stem}.{hex}.{ext}")
}

fn console() -> &'static Console {
    static CONSOLE: OnceLock<Console> = OnceLock::new();
    CONSOLE.get_or_init(|| {
        let assets = vec![
            Asset { name: hashed("app", "js", APP_JS), bytes: APP_JS, content_type: "text/javascript; charset=utf-8" },
            Asset {
                name: hashed("style", "css", STYLE_CSS),
                bytes: STYLE_CSS,
                content_type: "text/css; charset=utf-8",
            },
        ];
        let index = INDEX
            .replace("{{app.js}}", &format!("assets/{}", assets[0].name))
            .replace("{{style.css}}", &format!("assets/{}", assets[1].name));
        Console { index, assets }
    })
}

fn secured(mut response: Response, cache: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

async fn index() -> Response {
    let response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], console().index.clone()).into_response();
    secured(response, "no-store")
}

async fn asset(Path(name): Path<String>) -> Response {
    match console().assets.iter().find(|a| a.name == name) {
        Some(a) => secured(
            ([(header::CONTENT_TYPE, a.content_type)], a.bytes).into_response(),
            "public, max-age=31536000, immutable",
        ),
        None => ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no console asset {name}")).into_response(),
    }
}

/// The console's routes; anyone may load them (they hold no data).
pub fn router() -> Router<AppState> {
    Router::new()
        // Relative, so it works behind a path prefix.
        .route("/console", get(|| async { Redirect::permanent("console/") }))
        .route("/console/", get(index))
        .route("/console/assets/{name}", get(asset))
}

/// The console's total size in bytes (it must stay small).
pub fn size() -> usize {
    INDEX.len() + APP_JS.len() + STYLE_CSS.len()
}
