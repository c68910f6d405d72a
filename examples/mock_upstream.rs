//! A stand-in for the ElevenLabs and OpenAI APIs, for benchmarks: every `POST
//! /v1/text-to-speech/{voice}` is answered 200 with a small MP3-like body and the
//! `character-cost` header ElevenLabs sends; every `POST /v1/chat/completions` with a chat
//! completion (JSON, or an SSE stream of chunks ending with usage when the request asks for
//! it, as OpenAI does); anything else gets 404.
//!
//! ```text
//! cargo run --release --example mock_upstream -- 127.0.0.1:18080
//! cargo run --release --example mock_upstream -- 127.0.0.1:18443 --tls cert.pem key.pem [--h1]
//! ```
//!
//! With `--tls` it speaks HTTPS with that certificate, offering `h2` and `http/1.1` in ALPN
//! (only `http/1.1` with `--h1`), as the providers do.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Audio bytes per response: a few frames, like a short TTS clip.
const AUDIO_BYTES: usize = 4096;

/// A chat completion: usage counts of an answer of about a hundred words.
const CHAT_JSON: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Low tide is at 06:40 and again at 19:05; the flats are walkable for about two hours around each."},"finish_reason":"stop"}],"usage":{"prompt_tokens":42,"completion_tokens":128,"total_tokens":170,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#;

/// The chunks of a streamed completion, then (when asked for) the usage chunk.
fn chat_stream(with_usage: bool) -> Bytes {
    let mut out = String::new();
    for word in ["Low", " tide", " is", " at", " 06:40", " and", " again", " at", " 19:05."] {
        out.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}}}}]}}\n\n"
        ));
    }
    if with_usage {
        out.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":42,\"completion_tokens\":128,\"total_tokens\":170}}\n\n");
    }
    out.push_str("data: [DONE]\n\n");
    Bytes::from(out)
}

async fn chat(body: Bytes) -> Response<Full<Bytes>> {
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let (content_type, bytes) = if json["stream"] == true {
        let with_usage = json.pointer("/stream_options/include_usage") == Some(&serde_json::Value::Bool(true));
        ("text/event-stream", chat_stream(with_usage))
    } else {
        ("application/json", Bytes::from_static(CHAT_JSON.as_bytes()))
    };
    let mut r = Response::new(Full::new(bytes));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

async fn answer(req: Request<Incoming>, audio: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == Method::POST && req.uri().path() == "/v1/chat/completions" {
        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        return Ok(chat(body).await);
    }
    let is_tts = req.method() == Method::POST && req.uri().path().starts_with("/v1/text-to-speech/");
    // Read the request like the real API does (the text is what is billed).
    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let mut r = Response::new(Full::new(if is_tts { audio } else { Bytes::from_static(b"{\"detail\":\"not found\"}") }));
    if !is_tts {
        *r.status_mut() = StatusCode::NOT_FOUND;
        return Ok(r);
    }
    let characters = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("text").and_then(|t| t.as_str()).map(|t| t.chars().count()))
        .unwrap_or(0);
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("audio/mpeg"));
    h.insert("character-cost", http::HeaderValue::from(characters));
    h.insert("request-id", http::HeaderValue::from_static("mock"));
    Ok(r)
}

/// A TLS acceptor for the certificate chain and key in PEM files.
fn tls_acceptor(cert: &str, key: &str, h2: bool) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |e: &dyn std::fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string());
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| bad(&e))?;
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: SocketAddr = args
        .first()
        .map_or("127.0.0.1:18080", String::as_str)
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("listen address: {e}")))?;
    let tls = match args.iter().position(|a| a == "--tls") {
        Some(i) => match (args.get(i + 1), args.get(i + 2)) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key, !args.iter().any(|a| a == "--h1"))?),
            _ => return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "--tls needs CERT and KEY")),
        },
        None => None,
    };
    let listener = TcpListener::bind(addr).await?;
    eprintln!("mock upstream listening on {}", listener.local_addr()?);
    let audio = Bytes::from(vec![0xffu8; AUDIO_BYTES]);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (audio, tls) = (audio.clone(), tls.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, audio.clone()));
            let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = match tls {
                None => server.serve_connection(TokioIo::new(stream), svc).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => server.serve_connection(TokioIo::new(stream), svc).await,
                    Err(e) => {
                        eprintln!("TLS handshake: {e}");
                        return;
                    }
                },
            };
        });
    }
}
