//! Byte-level readers: what the proxy reads on the wire, independent of any provider.
//!
//! Request bodies are read strictly ([`strict_json`], [`multipart`]); response bodies are
//! decoded ([`decode`]) and read incrementally ([`sse`] events, [`json_scan`] records, the
//! strings of an event without keeping them: [`json_text`]). This
//! module depends on nothing above it: the providers build on it and turn its [`BodyError`]
//! into their own refusals.

pub mod decode;
pub mod json_scan;
pub mod json_text;
pub mod multipart;
pub mod sse;
pub mod strict_json;

use std::fmt;

/// Why a request body was refused (the message of a 400 `invalid_request_body`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError(pub String);

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
