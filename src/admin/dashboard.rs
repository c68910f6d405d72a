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

/// The page with the limits editor appended to its body, and the CSP that lets exactly its
/// inline scripts and styles run.
fn full_page() -> &'static (String, String) {
    static FULL: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    FULL.get_or_init(|| {
        let html = match PAGE.rfind("</body>") {
            Some(at) => format!("{}{LIMITS_EDITOR}\n{}", &PAGE[..at], &PAGE[at..]),
            None => format!("{PAGE}{LIMITS_EDITOR}"),
        };
        let csp = csp(&html);
        (html, csp)
    })
}

/// The contents of every `<tag>...</tag>` element without attributes in `html`.
fn inline_blocks<'a>(html: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    out
}

/// `'sha256-<base64>'` of each block, as CSP source expressions.
fn hashes(blocks: &[&str]) -> String {
    let list: Vec<String> = blocks
        .iter()
        .map(|b| format!("'sha256-{}'", base64(ring::digest::digest(&ring::digest::SHA256, b.as_bytes()).as_ref())))
        .collect();
    if list.is_empty() {
        "'none'".into()
    } else {
        list.join(" ")
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Only the page's own inline scripts and styles (by hash: no `'unsafe-inline'`, so injected
/// markup cannot run script or restyle the page), API calls to this origin only, nothing
/// else. Styles set from the page's script through the CSSOM (bar widths) are not inline
/// style attributes and need no allowance.
fn csp(html: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'",
        hashes(&inline_blocks(html, "script")),
        hashes(&inline_blocks(html, "style"))
    )
}

fn html(status: StatusCode, body: String, csp: &str) -> Response<AdminBody> {
    let mut r = respond(status, "text/html; charset=utf-8", body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_str(csp).expect("a CSP is header-safe"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

pub fn page() -> Response<AdminBody> {
    let (page, csp) = full_page();
    html(StatusCode::OK, page.clone(), csp)
}

/// The answer to `/` without a valid token: a form that opens `/?token=...`.
pub fn login_page(status: StatusCode, wrong: bool) -> Response<AdminBody> {
    let note = if wrong { "<p class=\"err\">That token is wrong.</p>" } else { "" };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>spendgate: sign in</title>\
             <style>body{{font:15px system-ui,sans-serif;margin:3rem auto;max-width:28rem}}.err{{color:#d93838}}input{{width:100%;padding:.4rem}}</style>\
             </head><body><h1>spendgate</h1>{note}<p>The dashboard needs the admin token (the value of the variable named by \
             <code>admin.token_env</code>, or one of <code>admin.tokens</code>).</p><form method=\"get\" action=\"/\"><input type=\"password\" name=\"token\" \
             autocomplete=\"current-password\" autofocus><p><button type=\"submit\">Open</button></p></form></body></html>"
    );
    let csp = csp(&body);
    html(status, body, &csp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc, "{raw}");
        }
    }

    #[test]
    fn the_csp_allows_each_inline_block_by_hash_and_nothing_inline_else() {
        let (page, csp) = full_page();
        assert!(!csp.contains("unsafe"), "{csp}");
        let scripts = inline_blocks(page, "script");
        assert_eq!(scripts.len(), 2, "the dashboard's and the limits editor's");
        assert_eq!(inline_blocks(page, "style").len(), 2);
        assert_eq!(page.matches("<script").count(), 2, "no script tag with attributes");
        assert!(!page.contains(" style=\""), "no style attribute: the CSP would refuse it");
        // The hash of `alert(1)`, as browsers compute it.
        assert_eq!(hashes(&["alert(1)"]), "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='");
        for s in scripts {
            assert!(csp.contains(&hashes(&[s])));
        }
        let login = login_page(StatusCode::UNAUTHORIZED, true);
        let csp = login.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("style-src 'sha256-") && csp.contains("script-src 'none'"), "{csp}");
    }
}
