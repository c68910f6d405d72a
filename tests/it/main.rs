//! The integration tests, in one binary so that the shared harness (`common`) and the
//! library are compiled and linked once. One module per area.

mod common;

mod admin_auth;
mod alerts;
mod anthropic;
mod body_readers;
mod cli;
mod cli_ops;
mod concurrency;
mod dashboard;
mod dashboard_fleet;
mod deploy;
mod embedded_store;
mod escape;
mod fixtures_cost;
mod gemini_media;
mod key_injection;
mod limits_live;
mod metrics_labels;
mod openai;
mod promtool;
mod proxy_behaviour;
mod rate_windows;
mod redis_shared;
mod redis_store;
mod reload;
mod sdk_elevenlabs_gemini;
mod sdk_media_compat;
mod sdk_openai_anthropic;
mod tags;
mod upstream_tls;
mod usage_api;
