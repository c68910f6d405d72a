//! Decoding a copy of a compressed response for usage extraction.
//!
//! The client always receives the upstream's bytes untouched; the extractor reads a decoded
//! copy. Decoding is incremental (each chunk is decoded as it passes) and bounded: a body
//! that decodes to more than `max_output` bytes (a decompression bomb) stops being read.

use std::io::Write;

use http::HeaderMap;

/// Decoded output is written here and drained after every chunk.
#[derive(Default)]
struct Sink(Vec<u8>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Codec {
    Identity,
    Gzip(flate2::write::MultiGzDecoder<Sink>),
    Deflate(flate2::write::ZlibDecoder<Sink>),
    RawDeflate(flate2::write::DeflateDecoder<Sink>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Sink>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Sink>>),
}

/// The content codings the proxy asks the upstream for: those the client accepts (a wildcard
/// accepts all) that the proxy can also decode, so that the usage can always be read and a
/// rewritten stream restored, while the client still gets a coding it accepts. `identity`
/// when there are none (a client that sent no `Accept-Encoding` gets what it got before).
pub fn upstream_accept_encoding(request_headers: &HeaderMap) -> http::HeaderValue {
    const OFFERED: [&str; 4] = ["gzip", "deflate", "br", "zstd"];
    let mut accepted = [false; 4];
    let items = request_headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for item in items {
        let mut params = item.split(';');
        let coding = params.next().unwrap_or("").trim().to_ascii_lowercase();
        // `q=0` refuses a coding.
        let refused = params.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .or_else(|| p.strip_prefix("Q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        if refused {
            continue;
        }
        for (i, c) in OFFERED.iter().enumerate() {
            accepted[i] |= coding == "*" || coding == *c || (*c == "gzip" && coding == "x-gzip");
        }
    }
    let list: Vec<&str> = OFFERED.iter().zip(accepted).filter(|(_, a)| *a).map(|(c, _)| *c).collect();
    if list.is_empty() {
        http::HeaderValue::from_static("identity")
    } else {
        http::HeaderValue::from_str(&list.join(", ")).expect("codings are header-safe")
    }
}

/// The decoder for one response body.
pub struct Decoder {
    codec: Codec,
    failed: bool,
    /// True until the first byte: `deflate` may be zlib-wrapped or raw; the first byte tells.
    deflate_undecided: bool,
    decoded: u64,
    max_output: u64,
    scratch: Vec<u8>,
}

/// The outcome of decoding one chunk.
pub enum Decoded<'a> {
    Bytes(&'a [u8]),
    /// The encoding is unknown, or the data is corrupt or too large: stop extracting.
    Failed,
}

impl Decoder {
    /// A decoder for the response's `Content-Encoding` (None when it is unsupported).
    pub fn for_headers(headers: &HeaderMap, max_output: u64) -> Option<Self> {
        let mut codings: Vec<String> = Vec::new();
        for v in headers.get_all(http::header::CONTENT_ENCODING) {
            let s = v.to_str().ok()?;
            codings.extend(s.split(',').map(|c| c.trim().to_ascii_lowercase()).filter(|c| !c.is_empty() && c != "identity"));
        }
        let codec = match codings.as_slice() {
            [] => Codec::Identity,
            [c] => match c.as_str() {
                "gzip" | "x-gzip" => Codec::Gzip(flate2::write::MultiGzDecoder::new(Sink::default())),
                "deflate" => Codec::Deflate(flate2::write::ZlibDecoder::new(Sink::default())),
                "br" => Codec::Brotli(Box::new(brotli_decompressor::DecompressorWriter::new(Sink::default(), 4096))),
                "zstd" => Codec::Zstd(Box::new(zstd::stream::write::Decoder::new(Sink::default()).ok()?)),
                _ => return None,
            },
            // Stacked encodings are legal but unseen from these APIs.
            _ => return None,
        };
        let deflate_undecided = matches!(codec, Codec::Deflate(_));
        Some(Self {
            codec,
            failed: false,
            deflate_undecided,
            decoded: 0,
            max_output,
            scratch: Vec::new(),
        })
    }

    pub fn is_identity(&self) -> bool {
        matches!(self.codec, Codec::Identity)
    }

    /// Decodes one chunk of the encoded body. Identity bodies pass through without copying.
    pub fn decode<'a>(&'a mut self, chunk: &'a [u8]) -> Decoded<'a> {
        if self.failed {
            return Decoded::Failed;
        }
        if self.deflate_undecided && !chunk.is_empty() {
            self.deflate_undecided = false;
            // A zlib stream starts with CMF 0x?8 and a header check; otherwise it is raw.
            let zlib = chunk.len() < 2 || (chunk[0] & 0x0f == 8 && (u16::from(chunk[0]) << 8 | u16::from(chunk[1])) % 31 == 0);
            if !zlib {
                self.codec = Codec::RawDeflate(flate2::write::DeflateDecoder::new(Sink::default()));
            }
        }
        let result = match &mut self.codec {
            Codec::Identity => {
                self.decoded += chunk.len() as u64;
                return if self.decoded > self.max_output { self.fail() } else { Decoded::Bytes(chunk) };
            }
            Codec::Gzip(d) => d.write_all(chunk).and_then(|_| d.flush()),
            Codec::Deflate(d) => d.write_all(chunk).and_then(|_| d.flush()),
            Codec::RawDeflate(d) => d.write_all(chunk).and_then(|_| d.flush()),
            Codec::Brotli(d) => d.write_all(chunk).and_then(|_| d.flush()),
            Codec::Zstd(d) => d.write_all(chunk).and_then(|_| d.flush()),
        };
        if result.is_err() {
            return self.fail();
        }
        let produced = self.sink().len() as u64;
        self.decoded += produced;
        if self.decoded > self.max_output {
            return self.fail();
        }
        // Hand the decoded bytes out through `scratch`, keeping both allocations.
        self.scratch.clear();
        let sink = std::mem::take(self.sink());
        let old = std::mem::replace(&mut self.scratch, sink);
        *self.sink() = old;
        Decoded::Bytes(&self.scratch)
    }

    fn fail(&mut self) -> Decoded<'static> {
        self.failed = true;
        Decoded::Failed
    }

    fn sink(&mut self) -> &mut Vec<u8> {
        match &mut self.codec {
            Codec::Identity => unreachable!("identity has no sink"),
            Codec::Gzip(d) => &mut d.get_mut().0,
            Codec::Deflate(d) => &mut d.get_mut().0,
            Codec::RawDeflate(d) => &mut d.get_mut().0,
            Codec::Brotli(d) => &mut d.get_mut().0,
            Codec::Zstd(d) => &mut d.get_mut().0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_gets_only_decodable_codings_the_client_accepts() {
        let ae = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::ACCEPT_ENCODING, v.parse().unwrap());
            upstream_accept_encoding(&h)
        };
        assert_eq!(upstream_accept_encoding(&HeaderMap::new()), "identity");
        assert_eq!(ae("*"), "gzip, deflate, br, zstd");
        assert_eq!(ae("compress"), "identity");
        assert_eq!(ae("gzip, compress, br;q=0.5"), "gzip, br");
        assert_eq!(ae("gzip;q=0, deflate"), "deflate");
        assert_eq!(ae("x-gzip"), "gzip");
        assert_eq!(ae("identity"), "identity");
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn headers(enc: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_ENCODING, enc.parse().unwrap());
        h
    }

    fn decode_all(d: &mut Decoder, data: &[u8], piece: usize) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for c in data.chunks(piece) {
            match d.decode(c) {
                Decoded::Bytes(b) => out.extend_from_slice(b),
                Decoded::Failed => return None,
            }
        }
        Some(out)
    }

    #[test]
    fn gzip_in_pieces() {
        let body = b"{\"usageMetadata\": {\"promptTokenCount\": 24}}".repeat(50);
        let z = gzip(&body);
        for piece in [1, 5, 4096] {
            let mut d = Decoder::for_headers(&headers("gzip"), 1 << 20).unwrap();
            assert_eq!(decode_all(&mut d, &z, piece).unwrap(), body);
        }
    }

    #[test]
    fn deflate_zlib_and_raw() {
        let body = b"hello deflate".repeat(10);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&body).unwrap();
        let zlib = z.finish().unwrap();
        let mut d = Decoder::for_headers(&headers("deflate"), 1 << 20).unwrap();
        assert_eq!(decode_all(&mut d, &zlib, 3).unwrap(), body);
        let mut r = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        r.write_all(&body).unwrap();
        let raw = r.finish().unwrap();
        let mut d = Decoder::for_headers(&headers("deflate"), 1 << 20).unwrap();
        assert_eq!(decode_all(&mut d, &raw, 3).unwrap(), body);
    }

    #[test]
    fn zstd_and_brotli() {
        let body = b"zstd and brotli".repeat(20);
        let z = zstd::stream::encode_all(&body[..], 3).unwrap();
        let mut d = Decoder::for_headers(&headers("zstd"), 1 << 20).unwrap();
        assert_eq!(decode_all(&mut d, &z, 7).unwrap(), body);
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(&body).unwrap();
        }
        for piece in [1, 9, 4096] {
            let mut d = Decoder::for_headers(&headers("br"), 1 << 20).unwrap();
            assert_eq!(decode_all(&mut d, &br, piece).unwrap(), body);
        }
    }

    #[test]
    fn corrupt_and_bombs_fail_without_panicking() {
        let mut d = Decoder::for_headers(&headers("gzip"), 1 << 20).unwrap();
        assert!(decode_all(&mut d, b"definitely not gzip at all", 4).is_none());
        let bomb = gzip(&vec![0u8; 4 << 20]);
        let mut d = Decoder::for_headers(&headers("gzip"), 1 << 20).unwrap();
        assert!(decode_all(&mut d, &bomb, 1024).is_none());
        assert!(Decoder::for_headers(&headers("compress"), 1).is_none());
        assert!(Decoder::for_headers(&headers("gzip, br"), 1).is_none());
        assert!(Decoder::for_headers(&HeaderMap::new(), 1).unwrap().is_identity());
    }
}
