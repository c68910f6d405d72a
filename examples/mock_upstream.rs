//! A stand-in for the ElevenLabs API, for benchmarks: every `POST
//! /v1/text-to-speech/{voice}` is answered 200 with a small MP3-like body and the
//! `character-cost` header ElevenLabs sends; anything else gets 404.
//!
//! ```text
//! cargo run --release --example mock_upstream -- 127.0.0.1:18080
//! ```

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

async fn answer(req: Request<Incoming>, audio: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
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

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("listen address: {e}")))?;
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
        let audio = audio.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, audio.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
