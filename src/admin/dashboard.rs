//! `GET /`: the dashboard, one self-contained page (no CDN, no build step) that reads the
//! usage API from the browser. Opened with `?token=<admin token>` when the token is set; the
//! page then sends the token as a bearer header on its API calls. (The token is in the URL,
//! hence in the browser's history: where that matters, put a proxy in front that adds the
//! `Authorization` header instead.)

use http::{header, HeaderValue, Response, StatusCode};

use super::{respond, AdminBody};

const PAGE: &str = include_str!("dashboard.html");
/// The limits editor, its own section of the page (kept in its own file).
const LIMITS_EDITOR: &str = include_str!("limits_editor.html");

/// The page with the limits editor appended to its body.
fn full_page() -> &'static str {
    static FULL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FULL.get_or_init(|| match PAGE.rfind("</body>") {
        Some(at) => format!("{}{LIMITS_EDITOR}\n{}", &PAGE[..at], &PAGE[at..]),
        None => format!("{PAGE}{LIMITS_EDITOR}"),
    })
}

/// Inline script and style only, API calls to this origin only, nothing else.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
                   img-src data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn html(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<AdminBody> {
    let mut r = respond(status, "text/html; charset=utf-8", body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

pub fn page() -> Response<AdminBody> {
    html(StatusCode::OK, full_page())
}

/// The answer to `/` without a valid token: a form that opens `/?token=...`.
pub fn login_page(status: StatusCode, wrong: bool) -> Response<AdminBody> {
    let note = if wrong { "<p class=\"err\">That token is wrong.</p>" } else { "" };
    html(
        status,
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>spendgate: sign in</title>\
             <style>body{{font:15px system-ui,sans-serif;margin:3rem auto;max-width:28rem}}.err{{color:#d93838}}input{{width:100%;padding:.4rem}}</style>\
             </head><body><h1>spendgate</h1>{note}<p>The dashboard needs the admin token (the value of the variable named by \
             <code>admin.token_env</code>, or one of <code>admin.tokens</code>).</p><form method=\"get\" action=\"/\"><input type=\"password\" name=\"token\" \
             autocomplete=\"current-password\" autofocus><p><button type=\"submit\">Open</button></p></form></body></html>"
        ),
    )
}
