//! A bounded reader of `multipart/form-data` request bodies (RFC 7578), for the uploads whose
//! price depends on a few form fields (OpenAI images, audio and videos; ElevenLabs speech to
//! text, voice changer and audio isolation).
//!
//! The whole body is already buffered; part bodies are borrowed from it. Only what pricing
//! needs is read: each part's name, file name and bytes. A body the upstream could read
//! differently from the proxy is refused: no or an invalid boundary, a part without a name, a
//! malformed header block (a line without a colon, a stray CR or LF, `Content-Disposition`
//! or one of its parameters given twice, a block past its bound), a body that does not end
//! with the closing delimiter, more parts than any real upload has; and, when pricing reads
//! it, a text field given twice, given as a file, or not UTF-8.
//!
//! Hand-written rather than a crate: the maintained multipart crates (`multer`) read an async
//! stream of chunks field by field, which a body already buffered for the estimate does not
//! need, and they take the first or last of repeated fields or parameters where metering must
//! refuse them; what is needed here is a few lines of splitting on the delimiter.

use http::HeaderMap;
use memchr::memmem;

use super::strict_json::Printable;
use super::BodyError;

/// Most parts in one form (the largest real form, an edit with 16 images, has about 30).
const MAX_PARTS: usize = 256;
/// Longest header block of one part.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Longest boundary (RFC 2046 §5.1.1).
const MAX_BOUNDARY: usize = 70;

/// One part of a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    /// Set for file parts.
    pub filename: Option<String>,
    pub body: &'a [u8],
}

/// A parsed form.
#[derive(Debug, Clone, Default)]
pub struct Form<'a> {
    pub parts: Vec<Part<'a>>,
}

/// A body that is not a form the proxy reads as the upstream does.
fn unreadable(why: &str) -> BodyError {
    BodyError(format!("the request body is not a readable multipart form: {why}"))
}

impl<'a> Form<'a> {
    /// Reads a request's form: its boundary from the content type, then the body.
    pub fn read(headers: &HeaderMap, body: &'a [u8]) -> Result<Form<'a>, BodyError> {
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unreadable("it has no content type"))?;
        Form::parse(body, &boundary(content_type)?)
    }

    /// Splits a buffered form into its parts.
    pub fn parse(body: &'a [u8], boundary: &str) -> Result<Form<'a>, BodyError> {
        let delimiter = [b"--", boundary.as_bytes()].concat();
        let separator = [b"\r\n", delimiter.as_slice()].concat();
        // The first delimiter may follow a preamble; the others follow a CRLF.
        let start = if body.starts_with(&delimiter) {
            0
        } else {
            memmem::find(body, &separator).ok_or_else(|| unreadable("the boundary never occurs"))? + 2
        };
        let mut rest = &body[start + delimiter.len()..];
        let mut form = Form::default();
        loop {
            if rest.starts_with(b"--") {
                return Ok(form);
            }
            rest = after_line_end(rest).ok_or_else(|| unreadable("a boundary is not followed by a line break"))?;
            if form.parts.len() == MAX_PARTS {
                return Err(unreadable(&format!("it has more than {MAX_PARTS} parts")));
            }
            let head_end = memmem::find(&rest[..rest.len().min(MAX_HEADER_BYTES + 4)], b"\r\n\r\n")
                .ok_or_else(|| unreadable("a part's headers do not end or are too long"))?;
            let (name, filename) = disposition(&rest[..head_end])?;
            let content = &rest[head_end + 4..];
            let end = memmem::find(content, &separator).ok_or_else(|| unreadable("it ends before its closing boundary"))?;
            form.parts.push(Part {
                name,
                filename,
                body: &content[..end],
            });
            rest = &content[end + separator.len()..];
        }
    }

    /// The parts with a name.
    pub fn named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Part<'a>> + 's {
        self.parts.iter().filter(move |p| p.name == name)
    }

    /// The text of a field given at most once: `None` when absent; refused when given twice
    /// (the upstream's choice between two values is unknown), given as a file, or not UTF-8.
    pub fn text(&self, name: &str) -> Result<Option<&'a str>, BodyError> {
        let mut found = self.named(name);
        let Some(part) = found.next() else { return Ok(None) };
        let field = Printable(name);
        if found.next().is_some() {
            return Err(BodyError(format!("the form field {field:?} is given more than once")));
        }
        if part.filename.is_some() {
            return Err(BodyError(format!("the form field {field:?} is a file, not text")));
        }
        std::str::from_utf8(part.body)
            .map(Some)
            .map_err(|_| BodyError(format!("the form field {field:?} is not UTF-8 text")))
    }

    /// How many parts are files (carry a file name).
    pub fn files(&self) -> usize {
        self.parts.iter().filter(|p| p.filename.is_some()).count()
    }
}

/// The boundary of a `multipart/form-data` content type: refused when the type is another,
/// or the boundary is absent, given twice, or not 1 to 70 of the characters RFC 2046 allows.
pub fn boundary(content_type: &str) -> Result<String, BodyError> {
    let (essence, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !essence.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(BodyError("the request body must be a multipart form".into()));
    }
    let mut found = params
        .split(';')
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim());
    let value = found.next().filter(|_| found.next().is_none());
    let value = value.map(|v| v.strip_prefix('"').and_then(|q| q.strip_suffix('"')).unwrap_or(v));
    let valid =
        |b: &&str| (1..=MAX_BOUNDARY).contains(&b.len()) && !b.ends_with(' ') && b.bytes().all(|c| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c));
    value
        .filter(valid)
        .map(str::to_string)
        .ok_or_else(|| unreadable("the content type has no valid boundary"))
}

/// The bytes after a boundary line's end: optional transport padding, then CRLF.
fn after_line_end(s: &[u8]) -> Option<&[u8]> {
    let pad = s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
    s[pad..].strip_prefix(b"\r\n")
}

/// `name` and `filename` from a part's `Content-Disposition: form-data` header.
fn disposition(head: &[u8]) -> Result<(String, Option<String>), BodyError> {
    let head = std::str::from_utf8(head).map_err(|_| unreadable("a part's headers are not UTF-8"))?;
    let mut found = None;
    for line in head.split("\r\n") {
        let (key, value) = line
            .split_once(':')
            .filter(|_| !line.contains(['\r', '\n']))
            .ok_or_else(|| unreadable("a part's header block is malformed"))?;
        if key.trim().eq_ignore_ascii_case("content-disposition") && found.replace(value.trim()).is_some() {
            return Err(unreadable("a part has Content-Disposition twice"));
        }
    }
    let value = found.ok_or_else(|| unreadable("a part has no Content-Disposition"))?;
    let (kind, params) = value.split_once(';').unwrap_or((value, ""));
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err(unreadable("a part is not form-data"));
    }
    let params = parameters(params)?;
    let get = |key: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.clone());
    let name = get("name").filter(|n| !n.is_empty()).ok_or_else(|| unreadable("a part has no name"))?;
    Ok((name, get("filename")))
}

/// `; key=value` parameters, values plain or quoted (with backslash escapes); refused when a
/// key is given twice.
fn parameters(mut s: &str) -> Result<Vec<(String, String)>, BodyError> {
    let mut out: Vec<(String, String)> = Vec::new();
    loop {
        s = s.trim_start_matches([' ', '\t', ';']);
        if s.is_empty() {
            return Ok(out);
        }
        let (key, rest) = s.split_once('=').ok_or_else(|| unreadable("a Content-Disposition parameter has no value"))?;
        let (value, rest) = match rest.strip_prefix('"') {
            Some(quoted) => unquote(quoted)?,
            None => {
                let end = rest.find(';').unwrap_or(rest.len());
                (rest[..end].trim().to_string(), &rest[end..])
            }
        };
        let key = key.trim();
        if out.iter().any(|(k, _)| k.eq_ignore_ascii_case(key)) {
            return Err(unreadable("a Content-Disposition parameter is given twice"));
        }
        out.push((key.to_string(), value));
        s = rest;
    }
}

/// A quoted string's value and what follows its closing quote.
fn unquote(s: &str) -> Result<(String, &str), BodyError> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[i + 1..])),
            '\\' => value.push(chars.next().ok_or_else(|| unreadable("a quoted parameter ends in a backslash"))?.1),
            c => value.push(c),
        }
    }
    Err(unreadable("a quoted parameter is not closed"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A form as an HTTP client writes it: `(name, filename, bytes)` per part.
    pub(crate) fn form(boundary: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, filename, body) in parts {
            out.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
            if let Some(f) = filename {
                out.extend_from_slice(format!("; filename=\"{f}\"\r\nContent-Type: application/octet-stream").as_bytes());
            }
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        out
    }

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
        h
    }

    fn refused<T: std::fmt::Debug>(r: Result<T, BodyError>) -> String {
        match r {
            Err(BodyError(m)) => m,
            other => panic!("not refused as an invalid body: {other:?}"),
        }
    }

    #[test]
    fn reads_fields_and_files() {
        let audio: &[u8] = b"ID3\x00\r\n--not-the-boundary\r\n\x00\xff";
        let body = form("b0und", &[("model", None, b"whisper-1"), ("file", Some("a.mp3"), audio), ("n", None, b"2")]);
        let f = Form::parse(&body, "b0und").unwrap();
        assert_eq!(f.parts.len(), 3);
        assert_eq!(f.files(), 1);
        assert_eq!(f.text("model"), Ok(Some("whisper-1")));
        assert_eq!(f.text("missing"), Ok(None));
        let file = f.named("file").next().unwrap();
        assert_eq!((file.filename.as_deref(), file.body), (Some("a.mp3"), audio));
    }

    #[test]
    fn reads_a_request_with_unquoted_names_and_boundary_like_bytes() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"model_id\"\r\n\r\nscribe_v2\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n\x00\x01--XyZ-not-a-boundary\r\n--XyZ\r\ncontent-disposition: form-data; name=webhook\r\n\r\nTrue\r\n--XyZ--\r\n";
        let f = Form::read(&headers("multipart/form-data; boundary=XyZ"), body).unwrap();
        assert_eq!(f.text("model_id").unwrap(), Some("scribe_v2"));
        assert_eq!(f.text("webhook").unwrap(), Some("True"));
        assert_eq!(f.files(), 1);
    }

    #[test]
    fn preamble_padding_quoting_and_header_case() {
        let body = b"preamble\r\n--xy \t\r\ncontent-disposition: FORM-DATA; name=\"a\\\"b\"; filename=x.png\r\n\r\nv\r\n--xy--";
        let f = Form::parse(body, "xy").unwrap();
        assert_eq!(f.parts[0].name, "a\"b");
        assert_eq!(f.parts[0].filename.as_deref(), Some("x.png"));
        assert_eq!(f.parts[0].body, b"v");
    }

    #[test]
    fn refuses_what_cannot_be_read_one_way() {
        let unclosed = b"--b\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n2\r\n";
        let unclosed_part = b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\na";
        let no_name = b"--b\r\nContent-Disposition: form-data\r\n\r\n2\r\n--b--";
        let not_form = b"--b\r\nContent-Disposition: attachment; name=\"n\"\r\n\r\n2\r\n--b--";
        let no_boundary = b"just bytes";
        let no_line_break = b"--b Content-Disposition: form-data; name=\"n\"\r\n\r\n2\r\n--b--";
        let two_names = b"--b\r\nContent-Disposition: form-data; name=\"n\"; NAME=\"m\"\r\n\r\n2\r\n--b--";
        let two_dispositions = b"--b\r\nContent-Disposition: form-data; name=\"n\"\r\nContent-Disposition: form-data; name=\"m\"\r\n\r\n2\r\n--b--";
        let no_colon = b"--b\r\nContent-Disposition: form-data; name=\"n\"\r\nX-Folded\r\n\r\n2\r\n--b--";
        let bare_lf = b"--b\r\nContent-Disposition: form-data; name=\"n\"\nX: y\r\n\r\n2\r\n--b--";
        let long_head = [
            &b"--b\r\nContent-Disposition: form-data; name=\"n\"\r\nX: "[..],
            &[b'y'; MAX_HEADER_BYTES],
            b"\r\n\r\n2\r\n--b--",
        ]
        .concat();
        for body in [
            &unclosed[..],
            unclosed_part,
            no_name,
            not_form,
            no_boundary,
            no_line_break,
            two_names,
            two_dispositions,
            no_colon,
            bare_lf,
            &long_head,
        ] {
            assert!(Form::parse(body, "b").is_err(), "{}", String::from_utf8_lossy(body));
        }
        let many = form("b", &vec![("x", None, &b""[..]); MAX_PARTS + 1]);
        assert!(Form::parse(&many, "b").is_err());
        // No content type, or another.
        assert!(Form::read(&HeaderMap::new(), b"--b--").is_err());
        assert!(Form::read(&headers("application/json"), b"{}").is_err());
    }

    #[test]
    fn refuses_a_text_field_read_two_ways() {
        let twice = form("b", &[("model_id", None, b"a"), ("model_id", None, b"b")]);
        let f = Form::parse(&twice, "b").unwrap();
        let message = refused(f.text("model_id"));
        assert!(message.contains("\"model_id\" is given more than once"), "{message}");
        // A text field and a file of the same name, a field given as a file, one not UTF-8.
        let mixed = form("b", &[("n", None, b"1"), ("n", Some("n.txt"), b"9")]);
        assert!(Form::parse(&mixed, "b").unwrap().text("n").is_err());
        let as_file = form("b", &[("model", Some("m.txt"), b"whisper-1")]);
        assert!(Form::parse(&as_file, "b").unwrap().text("model").is_err());
        let binary = form("b", &[("model", None, b"\xff")]);
        assert!(Form::parse(&binary, "b").unwrap().text("model").is_err());
        // Client strings in messages are shown bounded and escaped.
        let name = "\n".repeat(100);
        let part = Part {
            name: name.clone(),
            filename: Some("f".into()),
            body: b"",
        };
        assert!(!refused(Form { parts: vec![part] }.text(&name)).contains('\n'));
        // Repeated fields that pricing does not read are the upstream's to interpret.
        let list = form("b", &[("include[]", None, b"a"), ("include[]", None, b"b"), ("model", None, b"m")]);
        assert_eq!(Form::parse(&list, "b").unwrap().text("model"), Ok(Some("m")));
    }

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(boundary("multipart/form-data; boundary=abc"), Ok("abc".into()));
        assert_eq!(boundary("Multipart/Form-Data; charset=x; boundary=\"a b\""), Ok("a b".into()));
        assert!(boundary("application/json").is_err());
        for bad in [
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=\"\"",
            "multipart/form-data; boundary=a; boundary=b",
            "multipart/form-data; boundary=\"abc",
            "multipart/form-data; boundary=\"ab \"",
            "multipart/form-data; boundary=a\"b",
            "multipart/mixed; boundary=abc",
        ] {
            assert!(boundary(bad).is_err(), "{bad}");
        }
        assert!(boundary(&format!("multipart/form-data; boundary={}", "x".repeat(MAX_BOUNDARY))).is_ok());
        assert!(boundary(&format!("multipart/form-data; boundary={}", "x".repeat(MAX_BOUNDARY + 1))).is_err());
    }
}
