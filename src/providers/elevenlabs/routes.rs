//! The ElevenLabs endpoint table (`elevenlabs` 2.78.0's routes). The first route that matches
//! a request's method and path decides; a request no route matches is free when it only
//! reads or deletes (GET, HEAD, DELETE) and refused otherwise.

use http::Method;

use super::Ctx;
use crate::providers::{is_websocket_upgrade, path_matches, Call, RequestInfo};

/// How a metered call is estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tts,
    Dialogue,
    Sound,
    Music,
    VoiceChanger,
    Isolation,
    SpeechToText,
}

#[derive(Debug, Clone, Copy)]
enum Class {
    /// Metered; `true` when the response streams.
    Metered(Kind, bool),
    Free,
    Refused(&'static str),
}

struct Route {
    /// Space-separated methods, or `*`.
    methods: &'static str,
    pattern: &'static str,
    endpoint: &'static str,
    class: Class,
}

/// Speech to text charged from the transcript's duration.
pub const STT_SYNC: &str = "speech_to_text";
/// Speech to text charged the bound from the upload (webhook delivery, several channels).
pub const STT_BOUND: &str = "speech_to_text_bound";

const LATER: &str = "its bill is settled when the job renders, later and out of sight of the proxy";
const CREDENTIAL: &str = "it mints a credential that reaches the provider without going through the proxy";
const AGENT: &str = "agent conversations and calls are billed by the minute as they run, out of sight of the proxy";
const WEBSOCKET: &str = "WebSocket sessions are billed per message, and the proxy does not read them";
const UNKNOWN_UNIT: &str = "the proxy does not know the unit it is billed in";
const UNKNOWN_LENGTH: &str = "it is billed by the length of a video the proxy cannot measure";
const UNKNOWN: &str = "the proxy does not know whether or how it is billed";

const fn r(methods: &'static str, pattern: &'static str, endpoint: &'static str, class: Class) -> Route {
    Route {
        methods,
        pattern,
        endpoint,
        class,
    }
}

const fn metered(pattern: &'static str, endpoint: &'static str, kind: Kind, streaming: bool) -> Route {
    r("POST", pattern, endpoint, Class::Metered(kind, streaming))
}

const fn free(methods: &'static str, pattern: &'static str) -> Route {
    r(methods, pattern, "other", Class::Free)
}

const fn refused(methods: &'static str, pattern: &'static str, endpoint: &'static str, why: &'static str) -> Route {
    r(methods, pattern, endpoint, Class::Refused(why))
}

use Kind::*;

const ROUTES: &[Route] = &[
    // WebSockets (any method: the upgrade is a GET).
    refused("*", "v1/text-to-speech/*/stream-input", "tts_websocket", WEBSOCKET),
    refused("*", "v1/text-to-speech/*/multi-stream-input", "tts_websocket", WEBSOCKET),
    refused("*", "v1/text-to-dialogue/stream-input", "dialogue_websocket", WEBSOCKET),
    refused("*", "v1/text-to-dialogue/multi-stream-input", "dialogue_websocket", WEBSOCKET),
    refused("*", "v1/speech-to-text/realtime", "stt_realtime", WEBSOCKET),
    refused("*", "v1/convai/conversation", "convai_conversation", WEBSOCKET),
    // Text to speech and dialogue: characters of the text.
    metered("v1/text-to-speech/*", "tts", Tts, false),
    metered("v1/text-to-speech/*/stream", "tts_stream", Tts, true),
    metered("v1/text-to-speech/*/with-timestamps", "tts_timestamps", Tts, false),
    metered("v1/text-to-speech/*/stream/with-timestamps", "tts_stream_timestamps", Tts, true),
    metered("v1/text-to-dialogue", "dialogue", Dialogue, false),
    metered("v1/text-to-dialogue/stream", "dialogue_stream", Dialogue, true),
    metered("v1/text-to-dialogue/with-timestamps", "dialogue_timestamps", Dialogue, false),
    metered("v1/text-to-dialogue/stream/with-timestamps", "dialogue_stream_timestamps", Dialogue, true),
    // Generators and audio tools: durations.
    metered("v1/sound-generation", "sound_generation", Sound, false),
    metered("v1/voice-changer/*", "voice_changer", VoiceChanger, false),
    metered("v1/voice-changer/*/stream", "voice_changer_stream", VoiceChanger, true),
    metered("v1/speech-to-text", STT_SYNC, SpeechToText, false),
    metered("v1/audio-isolation", "audio_isolation", Isolation, false),
    metered("v1/audio-isolation/stream", "audio_isolation_stream", Isolation, true),
    metered("v1/music", "music", Music, false),
    metered("v1/music/stream", "music_stream", Music, true),
    metered("v1/music/detailed", "music_detailed", Music, false),
    metered("v1/music/detailed/stream", "music_detailed_stream", Music, true),
    free("POST", "v1/music/plan"),
    refused("POST", "v1/music/upload", "music_upload", LATER),
    refused("POST", "v1/music/video-to-music", "video_to_music", UNKNOWN_LENGTH),
    refused("POST", "v1/music/stem-separation", "stem_separation", UNKNOWN_UNIT),
    refused("POST", "v1/music/finetunes", "music_finetune", UNKNOWN_UNIT),
    refused("POST", "v1/forced-alignment", "forced_alignment", UNKNOWN_UNIT),
    refused("POST", "v1/text-to-voice/design", "voice_design", UNKNOWN_UNIT),
    refused("POST", "v1/text-to-voice/create-previews", "voice_previews", UNKNOWN_UNIT),
    refused("POST", "v1/text-to-voice/*/remix", "voice_remix", UNKNOWN_UNIT),
    free("POST", "v1/text-to-voice"),
    // Credentials.
    refused("GET", "v1/convai/conversation/get-signed-url", "convai_signed_url", CREDENTIAL),
    refused("GET", "v1/convai/conversation/token", "convai_token", CREDENTIAL),
    refused("POST", "v1/convai/realtime/client_secrets", "convai_client_secret", CREDENTIAL),
    refused("POST", "v1/single-use-token/*", "single_use_token", CREDENTIAL),
    // Dubbing, Studio, flows, productions, audio native: rendered later. Edits are free.
    free("POST", "v1/dubbing/resource/*/speaker"),
    free("POST", "v1/dubbing/resource/*/speaker/*/segment"),
    free("POST", "v1/dubbing/resource/*/migrate-segments"),
    free("POST", "v1/dubbing/project/*/transcript/segment"),
    refused("POST", "v1/dubbing/**", "dubbing", LATER),
    free("POST", "v1/studio/projects/*/snapshots/*/stream"),
    free("POST", "v1/studio/projects/*/snapshots/*/archive"),
    free("POST", "v1/studio/projects/*/chapters/*/snapshots/*/stream"),
    refused("POST", "v1/studio/**", "studio", LATER),
    refused("POST", "v1/flows/**", "flows", LATER),
    refused("POST", "v1/productions/orders/*/submit", "production_submit", LATER),
    free("POST", "v1/productions/**"),
    refused("POST", "v1/audio-native/**", "audio_native", LATER),
    // Agents platform: what starts conversations, calls or LLM work is refused; the rest
    // is configuration.
    refused("POST", "v1/convai/twilio/outbound-call", "convai_call", AGENT),
    refused("POST", "v1/convai/twilio/register-call", "convai_call", AGENT),
    refused("POST", "v1/convai/sip-trunk/outbound-call", "convai_call", AGENT),
    refused("POST", "v1/convai/exotel/outbound-call", "convai_call", AGENT),
    refused("POST", "v1/convai/whatsapp/outbound-call", "convai_call", AGENT),
    refused("POST", "v1/convai/whatsapp/outbound-message", "convai_call", AGENT),
    refused("POST", "v1/convai/batch-calling/submit", "convai_batch_call", AGENT),
    refused("POST", "v1/convai/batch-calling/*/retry", "convai_batch_call", AGENT),
    refused("POST", "v1/convai/outbound-campaigns/campaigns/submit", "convai_campaign", AGENT),
    refused("POST", "v1/convai/outbound-campaigns/campaigns/*/resume", "convai_campaign", AGENT),
    refused("POST", "v1/convai/outbound-campaigns/attention/*/retry", "convai_campaign", AGENT),
    refused("POST", "v1/convai/agents/*/simulate-conversation", "convai_simulation", AGENT),
    refused("POST", "v1/convai/agents/*/simulate-conversation/stream", "convai_simulation", AGENT),
    refused("POST", "v1/convai/agents/*/run-tests", "convai_tests", AGENT),
    refused("POST", "v1/convai/test-invocations/*/resubmit", "convai_tests", AGENT),
    refused("POST", "v1/convai/agent-testing/summaries", "convai_tests", UNKNOWN),
    refused("POST", "v1/convai/conversations/*/analysis/run", "convai_analysis", UNKNOWN),
    refused("POST", "v1/convai/conversations/*/analysis/evaluations/run", "convai_analysis", UNKNOWN),
    refused("POST", "v1/convai/agents/*/branches/*/procedures/compile", "convai_compile", UNKNOWN),
    refused("POST", "v1/convai/knowledge-base/rag-index", "convai_rag_index", UNKNOWN),
    refused("POST", "v1/convai/knowledge-base/*/rag-index", "convai_rag_index", UNKNOWN),
    refused("POST", "v1/convai/knowledge-base/crawl", "convai_crawl", UNKNOWN),
    free("POST", "v1/convai/agent-testing/**"),
    free("POST", "v1/convai/agent/*/llm-usage/calculate"),
    free("POST", "v1/convai/llm-usage/calculate"),
    free("POST", "v1/convai/agents/create"),
    free("POST", "v1/convai/agents/*/avatar"),
    free("POST", "v1/convai/agents/*/branches/**"),
    free("POST", "v1/convai/agents/*/deployments"),
    free("POST", "v1/convai/agents/*/drafts"),
    free("POST", "v1/convai/agents/*/duplicate"),
    free("POST", "v1/convai/agents/*/hold-audio"),
    free("POST", "v1/convai/agents/*/merge-proposals/**"),
    free("POST", "v1/convai/agents/*/triage-tickets"),
    free("POST", "v1/convai/analysis-items/**"),
    free("POST", "v1/convai/batch-calling/*/cancel"),
    free("POST", "v1/convai/conversations/*/feedback"),
    free("POST", "v1/convai/conversations/*/files"),
    free("POST", "v1/convai/conversations/*/tags"),
    free("POST", "v1/convai/environment-variables"),
    free("POST", "v1/convai/environments"),
    free("POST", "v1/convai/knowledge-base/**"),
    free("POST", "v1/convai/mcp-servers/**"),
    free("POST", "v1/convai/outbound-campaigns/**"),
    free("POST", "v1/convai/phone-numbers"),
    free("POST", "v1/convai/realtime/conversation-groups"),
    free("POST", "v1/convai/secrets"),
    free("POST", "v1/convai/tags"),
    free("POST", "v1/convai/test-invocations/*/cancel"),
    free("POST", "v1/convai/tools"),
    free("POST", "v1/convai/triage-tickets/**"),
    // Voices, dictionaries, history, workspace administration.
    free("POST", "v1/voices/**"),
    free("POST", "v1/similar-voices"),
    free("POST", "v1/pronunciation-dictionaries/**"),
    free("POST", "v1/history/download"),
    free("POST", "v1/assets"),
    free("POST", "v1/workspace/**"),
    free("POST", "v1/workspaces/**"),
    free("POST", "v1/service-accounts/**"),
    // Edits.
    free("PATCH PUT", "v1/convai/**"),
    free("PATCH PUT", "v1/dubbing/**"),
    free("PATCH PUT", "v1/music/finetunes/**"),
    free("PATCH PUT", "v1/productions/**"),
    free("PATCH PUT", "v1/pronunciation-dictionaries/**"),
    free("PATCH PUT", "v1/service-accounts/**"),
    free("PATCH PUT", "v1/speech-engine/**"),
    free("PATCH PUT", "v1/voices/**"),
    free("PATCH PUT", "v1/workspace/**"),
];

fn method_matches(methods: &str, method: &Method) -> bool {
    methods.split(' ').any(|m| m == "*" || m == method.as_str())
}

fn call(route: &Route) -> Call {
    match route.class {
        Class::Metered(kind, streaming) => {
            let ctx = Ctx {
                kind,
                name: route.endpoint,
                upload_bound: false,
            };
            let call = Call::metered(ctx).streaming(streaming);
            match kind {
                VoiceChanger | Isolation | SpeechToText => call.raw_body(),
                Tts | Dialogue | Sound | Music => call,
            }
        }
        Class::Free => Call::free(route.endpoint, None),
        Class::Refused(why) => Call::not_metered(route.endpoint, why),
    }
}

pub fn classify(req: &RequestInfo<'_>) -> Call {
    if is_websocket_upgrade(req.headers) {
        return Call::not_metered("websocket", WEBSOCKET);
    }
    match ROUTES
        .iter()
        .find(|r| path_matches(r.pattern, req.path) && method_matches(r.methods, req.method))
    {
        Some(route) => call(route),
        None if matches!(*req.method, Method::GET | Method::HEAD | Method::DELETE) => Call::free("other", None),
        None => Call::not_metered("other", UNKNOWN),
    }
}
