use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::config::{Config, ProviderKind};
use crate::pricing::PriceTable;
use crate::providers::{estimate_call, Anomaly, BodyEnd, Settled};

fn info<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestInfo<'a> {
    RequestInfo {
        method,
        path,
        query: None,
        headers,
    }
}

fn classify(method: Method, path: &str) -> Call {
    ElevenLabs.classify(&info(&method, path, &HeaderMap::new()))
}

#[test]
fn every_sdk_route_has_its_class() {
    use Method as M;
    for (method, path, want) in [
        (M::POST, "/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM", 'm'),
        (M::POST, "/v1/text-to-speech/v/stream", 's'),
        (M::POST, "/v1/text-to-speech/v/with-timestamps", 'm'),
        (M::POST, "/v1/text-to-speech/v/stream/with-timestamps", 's'),
        (M::POST, "/v1/text-to-dialogue", 'm'),
        (M::POST, "/v1/text-to-dialogue/stream", 's'),
        (M::POST, "/v1/text-to-dialogue/with-timestamps", 'm'),
        (M::POST, "/v1/text-to-dialogue/stream/with-timestamps", 's'),
        (M::POST, "/v1/sound-generation", 'm'),
        (M::POST, "/v1/voice-changer/v", 'm'),
        (M::POST, "/v1/voice-changer/v/stream", 's'),
        (M::POST, "/v1/speech-to-text", 'm'),
        (M::POST, "/v1/audio-isolation", 'm'),
        (M::POST, "/v1/audio-isolation/stream", 's'),
        (M::POST, "/v1/music", 'm'),
        (M::POST, "/v1/music/stream", 's'),
        (M::POST, "/v1/music/detailed", 'm'),
        (M::POST, "/v1/music/detailed/stream", 's'),
        (M::POST, "/v1/music/plan", 'f'),
        (M::POST, "/v1/music/upload", 'r'),
        (M::POST, "/v1/music/video-to-music", 'r'),
        (M::POST, "/v1/music/stem-separation", 'r'),
        (M::POST, "/v1/forced-alignment", 'r'),
        (M::POST, "/v1/text-to-voice/design", 'r'),
        (M::POST, "/v1/text-to-voice/create-previews", 'r'),
        (M::POST, "/v1/text-to-voice/gv1/remix", 'r'),
        (M::POST, "/v1/text-to-voice", 'f'),
        (M::GET, "/v1/text-to-voice/gv1/stream", 'f'),
        (M::GET, "/v1/text-to-speech/v/stream-input", 'r'),
        (M::GET, "/v1/speech-to-text/realtime", 'r'),
        (M::GET, "/v1/convai/conversation", 'r'),
        (M::GET, "/v1/convai/conversation/get-signed-url", 'r'),
        (M::GET, "/v1/convai/conversation/token", 'r'),
        (M::POST, "/v1/convai/realtime/client_secrets", 'r'),
        (M::POST, "/v1/single-use-token/realtime_scribe", 'r'),
        (M::POST, "/v1/dubbing", 'r'),
        (M::POST, "/v1/dubbing/project", 'r'),
        (M::POST, "/v1/dubbing/resource/d1/dub", 'r'),
        (M::POST, "/v1/dubbing/resource/d1/render/fr", 'r'),
        (M::POST, "/v1/dubbing/resource/d1/speaker", 'f'),
        (M::PATCH, "/v1/dubbing/resource/d1/segment/s1/fr", 'f'),
        (M::GET, "/v1/dubbing/d1/audio/fr", 'f'),
        (M::POST, "/v1/studio/projects", 'r'),
        (M::POST, "/v1/studio/projects/p/convert", 'r'),
        (M::POST, "/v1/studio/projects/p/chapters/c/convert", 'r'),
        (M::POST, "/v1/studio/podcasts", 'r'),
        (M::POST, "/v1/studio/projects/p/snapshots/s/stream", 'f'),
        (M::POST, "/v1/flows/text-to-speech", 'r'),
        (M::POST, "/v1/flows/templates/t/runs", 'r'),
        (M::POST, "/v1/productions/orders", 'f'),
        (M::POST, "/v1/productions/orders/o/submit", 'r'),
        (M::POST, "/v1/audio-native", 'r'),
        (M::POST, "/v1/convai/twilio/outbound-call", 'r'),
        (M::POST, "/v1/convai/sip-trunk/outbound-call", 'r'),
        (M::POST, "/v1/convai/batch-calling/submit", 'r'),
        (M::POST, "/v1/convai/outbound-campaigns/campaigns/submit", 'r'),
        (M::POST, "/v1/convai/agents/a/simulate-conversation/stream", 'r'),
        (M::POST, "/v1/convai/agents/a/run-tests", 'r'),
        (M::POST, "/v1/convai/conversations/c/analysis/run", 'r'),
        (M::POST, "/v1/convai/knowledge-base/d/rag-index", 'r'),
        (M::POST, "/v1/convai/agents/create", 'f'),
        (M::POST, "/v1/convai/tools", 'f'),
        (M::POST, "/v1/convai/knowledge-base/text", 'f'),
        (M::POST, "/v1/convai/llm-usage/calculate", 'f'),
        (M::POST, "/v1/convai/outbound-campaigns/campaigns/c/stop", 'f'),
        (M::POST, "/v1/convai/something-new", 'r'),
        (M::PATCH, "/v1/convai/agents/a", 'f'),
        (M::DELETE, "/v1/convai/agents/a", 'f'),
        (M::GET, "/v1/voices", 'f'),
        (M::GET, "/v2/voices", 'f'),
        (M::POST, "/v1/voices/add", 'f'),
        (M::POST, "/v1/voices/pvc/v/train", 'f'),
        (M::POST, "/v1/voices/v/settings/edit", 'f'),
        (M::POST, "/v1/similar-voices", 'f'),
        (M::POST, "/v1/pronunciation-dictionaries/add-from-rules", 'f'),
        (M::GET, "/v1/models", 'f'),
        (M::GET, "/v1/user/subscription", 'f'),
        (M::GET, "/v1/usage/character-stats", 'f'),
        (M::GET, "/v1/history/h/audio", 'f'),
        (M::POST, "/v1/history/download", 'f'),
        (M::POST, "/v1/workspace/invites/add", 'f'),
        (M::POST, "/v1/speech-engine", 'r'),
        (M::POST, "/v1/brand-new-paid-thing", 'r'),
        (M::PUT, "/v1/brand-new-paid-thing", 'r'),
    ] {
        assert_eq!(classify(method.clone(), path).class_letter(), want, "{method} {path}");
    }
}

#[test]
fn websocket_upgrades_are_refused_on_any_path() {
    let mut h = HeaderMap::new();
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    let c = ElevenLabs.classify(&info(&Method::GET, "/v1/text-to-speech/v", &h));
    assert!(c.unmetered.is_some());
}

fn estimate(method: Method, path: &str, headers: &HeaderMap, body: &[u8]) -> (Call, Result<Estimate, Refusal>) {
    let req = info(&method, path, headers);
    let mut call = ElevenLabs.classify(&req);
    let e = estimate_call(&ElevenLabs, &mut call, &req, body, &ReserveConfig::default());
    (call, e)
}

fn json_estimate(path: &str, body: &str) -> (Call, Result<Estimate, Refusal>) {
    estimate(Method::POST, path, &HeaderMap::new(), body.as_bytes())
}

#[test]
fn text_is_counted_in_unicode_scalars_with_the_model_default() {
    let (call, e) = json_estimate("/v1/text-to-speech/v", "{\"text\":\"héllo ✓\"}");
    assert_eq!(e.unwrap().usage.characters, 7);
    assert_eq!(call.model.as_deref(), Some(DEFAULT_TTS_MODEL));
    let (call, e) = json_estimate("/v1/text-to-speech/v/stream", r#"{"text":"ab","model_id":"eleven_flash_v2_5"}"#);
    assert_eq!(e.unwrap().usage.characters, 2);
    assert_eq!(call.model.as_deref(), Some("eleven_flash_v2_5"));
    let (call, e) = json_estimate(
        "/v1/text-to-dialogue/stream",
        r#"{"inputs":[{"text":"Hello","voice_id":"a"},{"text":"Hi there","voice_id":"b"}]}"#,
    );
    assert_eq!(e.unwrap().usage.characters, 13);
    assert_eq!(call.model.as_deref(), Some(DEFAULT_DIALOGUE_MODEL));
}

#[test]
fn a_text_that_cannot_be_read_is_refused() {
    for (path, body) in [
        ("/v1/text-to-speech/v", r#"{"model_id":"eleven_v3"}"#),
        ("/v1/text-to-speech/v", r#"{"text":42}"#),
        ("/v1/text-to-speech/v", r#"{"text":null}"#),
        ("/v1/text-to-speech/v", r#"{"text":"a","text":"long"}"#),
        ("/v1/text-to-speech/v", r#"["text"]"#),
        ("/v1/text-to-speech/v", r#"{"text":"a","model_id":7}"#),
        ("/v1/text-to-dialogue", r#"{"inputs":[]}"#),
        ("/v1/text-to-dialogue", r#"{"inputs":[{"voice_id":"a"}]}"#),
        ("/v1/text-to-dialogue", r#"{"text":"a"}"#),
        ("/v1/sound-generation", r#"{"duration_seconds":2}"#),
        ("/v1/sound-generation", r#"{"text":"rain","duration_seconds":-1}"#),
        ("/v1/sound-generation", r#"{"text":"rain","duration_seconds":"2"}"#),
        ("/v1/music", r#"{"prompt":"jazz","music_length_ms":"30000"}"#),
        ("/v1/music", r#"{"prompt":"jazz","music_length_ms":-5}"#),
        ("/v1/music", r#"{"composition_plan":{"sections":[{"duration_ms":1.5}]}}"#),
    ] {
        let (_, e) = json_estimate(path, body);
        assert!(matches!(e, Err(Refusal::InvalidBody(_))), "{path} {body}: {e:?}");
    }
}

#[test]
fn sound_effects_are_priced_by_duration() {
    let (call, e) = json_estimate(
        "/v1/sound-generation",
        r#"{"text":"door","duration_seconds":3.0,"model_id":"eleven_text_to_sound_v2"}"#,
    );
    assert_eq!(e.unwrap().usage.audio_millis, 3_000);
    assert_eq!(call.model.as_deref(), Some("eleven_text_to_sound_v2"));
    let (call, e) = json_estimate("/v1/sound-generation", r#"{"text":"door"}"#);
    assert_eq!(e.unwrap().usage.audio_millis, 5_000, "100 credits at 20 credits per second");
    assert_eq!(call.model.as_deref(), Some(DEFAULT_SOUND_MODEL));
}

#[test]
fn music_length_comes_from_the_request_or_the_plan_or_the_maximum() {
    let ms = |body: &str| json_estimate("/v1/music", body).1.unwrap().usage.audio_millis;
    assert_eq!(ms(r#"{"prompt":"jazz","music_length_ms":30000}"#), 30_000);
    assert_eq!(
        ms(r#"{"composition_plan":{"positive_global_styles":[],"sections":[{"duration_ms":10000},{"duration_ms":15000}]}}"#),
        25_000
    );
    assert_eq!(ms(r#"{"prompt":"jazz"}"#), 600_000);
}

fn multipart(fields: &[(&str, &str)], audio: usize) -> (HeaderMap, Vec<u8>) {
    let mut h = HeaderMap::new();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("multipart/form-data; boundary=BnD"));
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(format!("--BnD\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes());
    }
    if audio > 0 {
        body.extend_from_slice(b"--BnD\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\n\r\n");
        body.extend(std::iter::repeat_n(0x55u8, audio));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--BnD--\r\n");
    (h, body)
}

#[test]
fn uploads_are_bounded_at_the_lowest_bitrate() {
    let (h, body) = multipart(&[("model_id", "eleven_english_sts_v2")], 29_900);
    // 29,900 bytes of audio plus 164 bytes of form: 30,064 bytes at 500 bytes/s = 60.128 s.
    assert_eq!(body.len(), 30_064);
    let (call, e) = estimate(Method::POST, "/v1/voice-changer/v/stream", &h, &body);
    assert_eq!(e.unwrap().usage.audio_millis, 60_128);
    assert_eq!(call.model.as_deref(), Some("eleven_english_sts_v2"));
    let (h, body) = multipart(&[], 1_000);
    let (call, e) = estimate(Method::POST, "/v1/audio-isolation", &h, &body);
    assert!(e.unwrap().usage.audio_millis > 2_000);
    assert_eq!(call.model.as_deref(), Some(AUDIO_ISOLATION_MODEL));
    // No audio, or not a form: refused.
    let (h, body) = multipart(&[("model_id", "m")], 0);
    assert!(matches!(
        estimate(Method::POST, "/v1/voice-changer/v", &h, &body).1,
        Err(Refusal::InvalidBody(_))
    ));
    let mut json = HeaderMap::new();
    json.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    assert!(matches!(
        estimate(Method::POST, "/v1/audio-isolation", &json, b"{}").1,
        Err(Refusal::InvalidBody(_))
    ));
}

#[test]
fn speech_to_text_reserves_from_the_upload_never_zero() {
    let (h, body) = multipart(&[("model_id", "scribe_v2")], 159_848);
    assert_eq!(body.len(), 160_000);
    let (call, e) = estimate(Method::POST, "/v1/speech-to-text", &h, &body);
    assert_eq!(e.unwrap().usage.audio_millis, 10_000, "160,000 bytes at 16,000 bytes/s");
    assert_eq!((call.endpoint_name(), call.model.as_deref()), (routes::STT_SYNC, Some("scribe_v2")));
    // A webhook delivers the transcript later: the bound is charged.
    let (h, body) = multipart(&[("webhook", "true")], 9_854);
    assert_eq!(body.len(), 10_000);
    let (call, e) = estimate(Method::POST, "/v1/speech-to-text", &h, &body);
    assert_eq!(e.unwrap().usage.audio_millis, 20_000);
    assert_eq!((call.endpoint_name(), call.model.as_deref()), (routes::STT_BOUND, Some(DEFAULT_STT_MODEL)));
    let x = ElevenLabs.extractor(
        &call,
        StatusCode::OK,
        &HeaderMap::new(),
        &Usage {
            audio_millis: 20_000,
            ..Usage::default()
        },
    );
    assert_eq!(run(x, br#"{"message":"queued"}"#, 3).usage.audio_millis, 20_000);
    // Every channel is billed.
    let (h, body) = multipart(&[("use_multi_channel", "1")], 9_847);
    assert_eq!(body.len(), 10_000);
    assert_eq!(estimate(Method::POST, "/v1/speech-to-text", &h, &body).1.unwrap().usage.audio_millis, 100_000);
    // Audio fetched from elsewhere is not bounded by the upload.
    let (h, body) = multipart(&[("cloud_storage_url", "https://example.com/a.mp3")], 0);
    assert!(matches!(estimate(Method::POST, "/v1/speech-to-text", &h, &body).1, Err(Refusal::NotMetered(_))));
    let (h, body) = multipart(&[("source_url", "https://a.example/1.mp3"), ("source_url", "https://a.example/2.mp3")], 10);
    assert!(matches!(estimate(Method::POST, "/v1/speech-to-text", &h, &body).1, Err(Refusal::NotMetered(_))));
    let (h, body) = multipart(&[("webhook", "later")], 10);
    assert!(matches!(
        estimate(Method::POST, "/v1/speech-to-text", &h, &body).1,
        Err(Refusal::InvalidBody(_))
    ));
    // The model given twice: the service's choice between them is unknown.
    let (h, body) = multipart(&[("model_id", "scribe_v1"), ("model_id", "scribe_v2")], 10);
    assert!(matches!(
        estimate(Method::POST, "/v1/speech-to-text", &h, &body).1,
        Err(Refusal::InvalidBody(_))
    ));
}

#[test]
fn form_flags_take_the_services_spellings() {
    let (h, body) = multipart(&[("webhook", "True")], 10);
    let form = Form::read(&h, &body).unwrap();
    assert!(flag(&form, "webhook").unwrap());
    assert!(!flag(&form, "use_multi_channel").unwrap());
    let (h, body) = multipart(&[("webhook", "maybe")], 10);
    assert!(flag(&Form::read(&h, &body).unwrap(), "webhook").is_err());
}

fn run(mut x: Box<dyn UsageExtractor>, body: &[u8], piece: usize) -> Settled {
    for c in body.chunks(piece) {
        x.feed(c);
    }
    x.finish(BodyEnd::Complete)
}

fn with_cost(credits: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("character-cost", HeaderValue::from_static(credits));
    h
}

fn tts_call(model: &str) -> Call {
    classify(Method::POST, "/v1/text-to-speech/v").with_model(Some(model.into()))
}

#[test]
fn character_cost_raises_the_charge_never_lowers_it() {
    let est = Usage {
        characters: 92,
        ..Usage::default()
    };
    // Flash: 46 credits pay for 92 characters, as estimated.
    let s = run(
        ElevenLabs.extractor(&tts_call("eleven_flash_v2_5"), StatusCode::OK, &with_cost("46"), &est),
        b"ID3",
        1,
    );
    assert_eq!((s.usage.characters, s.source), (92, Source::Reported));
    // A voice with a 2x multiplier: 92 credits on Flash pay for 184 characters.
    let s = run(
        ElevenLabs.extractor(&tts_call("eleven_flash_v2_5"), StatusCode::OK, &with_cost("92"), &est),
        b"ID3",
        1,
    );
    assert_eq!(s.usage.characters, 184);
    // A discount reported below the estimate: the estimate stands.
    let s = run(
        ElevenLabs.extractor(&tts_call("eleven_multilingual_v2"), StatusCode::OK, &with_cost("50"), &est),
        b"",
        1,
    );
    assert_eq!(s.usage.characters, 92);
    let s = run(
        ElevenLabs.extractor(&tts_call("eleven_v3"), StatusCode::OK, &with_cost("garbage"), &est),
        b"",
        1,
    );
    assert_eq!(s.usage.characters, 92);
    // Sound effects: 20 credits per second.
    let sound = classify(Method::POST, "/v1/sound-generation");
    let est = Usage {
        audio_millis: 3_000,
        ..Usage::default()
    };
    let s = run(ElevenLabs.extractor(&sound, StatusCode::OK, &with_cost("80"), &est), b"", 1);
    assert_eq!(s.usage.audio_millis, 4_000);
    // Voice changer: 1,000 credits per minute.
    let sts = classify(Method::POST, "/v1/voice-changer/v");
    let s = run(ElevenLabs.extractor(&sts, StatusCode::OK, &with_cost("2000"), &est), b"", 1);
    assert_eq!(s.usage.audio_millis, 120_000);
}

#[test]
fn transcript_duration_in_any_pieces() {
    let call = classify(Method::POST, "/v1/speech-to-text");
    let fixture = br#"{"language_code":"en","text":"hi","words":[{"end":3.5}],"audio_duration_secs":12.48}"#;
    for piece in [1, 2, 7, 4096] {
        let s = run(
            ElevenLabs.extractor(&call, StatusCode::OK, &HeaderMap::new(), &Usage::default()),
            fixture,
            piece,
        );
        assert_eq!((s.usage.audio_millis, s.source), (12_480, Source::Reported), "{piece}");
    }
    let s = run(
        ElevenLabs.extractor(&call, StatusCode::OK, &HeaderMap::new(), &Usage::default()),
        br#"{"text":"hi","words":[{"end":1.0},{"end":3.5}]}"#,
        3,
    );
    assert_eq!(s.usage.audio_millis, 3_500);
    let est = Usage {
        audio_millis: 9_000,
        ..Usage::default()
    };
    let mut x = ElevenLabs.extractor(&call, StatusCode::OK, &HeaderMap::new(), &est);
    x.feed(br#"{"text":"hi","audio_dur"#);
    let s = x.finish(BodyEnd::Cut);
    assert_eq!((s.usage.audio_millis, s.anomaly), (9_000, Some(Anomaly::Cut)));
}

#[test]
fn prices_through_the_table() {
    let t = PriceTable::new(&Config::from_yaml("", "t").unwrap()).unwrap();
    let nanos = |model: &str, usage: Usage| t.price("elevenlabs", ProviderKind::Elevenlabs, &[Some(model)], &usage).nanos;
    let ms = |audio_millis| Usage {
        audio_millis,
        ..Usage::default()
    };
    // 3 s of sound effect at $86.40/h ($0.12 per 100 credits, 20 credits/s) = $0.072.
    assert_eq!(nanos("eleven_text_to_sound_v2", ms(3_000)), 72_000_000);
    // An automatic-length effect: $0.12.
    assert_eq!(nanos("eleven_text_to_sound_v2", ms(SOUND_AUTO_MILLIS)), 120_000_000);
    // One minute through the voice changer or the isolator: $0.12.
    assert_eq!(nanos(DEFAULT_STS_MODEL, ms(60_000)), 120_000_000);
    assert_eq!(nanos(AUDIO_ISOLATION_MODEL, ms(60_000)), 120_000_000);
    // 30 s of music at $0.30/min.
    assert_eq!(nanos(DEFAULT_MUSIC_MODEL, ms(30_000)), 150_000_000);
    // The fixture: 111 characters of Multilingual v2 at $0.10 per 1K.
    let chars = Usage {
        characters: 111,
        ..Usage::default()
    };
    assert_eq!(nanos(DEFAULT_TTS_MODEL, chars), 11_100_000);
}
