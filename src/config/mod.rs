//! The YAML configuration: schema, defaults and validation.
//!
//! `config.example.yaml` at the repository root documents every key. Every key has a
//! default, so a short file (or none at all) works.

mod diff;
mod load;
mod values;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

pub use diff::restart_only_changes;
pub(crate) use load::validate_proxy;
pub use load::{ConfigError, EMBEDDED_DEFAULT};
pub use values::{AlertAt, ListenAddr, NonNegative, Pattern, Positive, Ratio, Seconds, TimeZone};

use crate::domain::window::Window;
use crate::domain::{Metric, Mode};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Data-plane listen address.
    pub listen: ListenAddr,
    pub admin: AdminConfig,
    /// Daily and monthly windows follow this zone's calendar.
    pub timezone: TimeZone,
    pub store: StoreConfig,
    pub tenant: TenantConfig,
    pub server: ServerConfig,
    /// Provider name -> where it is mounted and where it goes.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Provider name or kind -> model glob -> prices.
    pub pricing: BTreeMap<String, BTreeMap<String, PriceSpec>>,
    pub unpriced: Unpriced,
    pub reserve: ReserveConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    pub alerts: AlertsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: ListenAddr("127.0.0.1:8080".parse().expect("static address")),
            admin: AdminConfig::default(),
            timezone: TimeZone::default(),
            store: StoreConfig::default(),
            tenant: TenantConfig::default(),
            server: ServerConfig::default(),
            providers: default_providers(),
            pricing: BTreeMap::new(),
            unpriced: Unpriced::default(),
            reserve: ReserveConfig::default(),
            limits: LimitsConfig::default(),
            metrics: MetricsConfig::default(),
            alerts: AlertsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: ListenAddr,
    /// When this environment variable is set, `/v1/*` and `/` need it as a bearer token.
    pub token_env: String,
    /// Serve `/metrics` without the token even when one is configured.
    pub public_metrics: bool,
    /// Named tokens with roles, each read from an environment variable. The token of
    /// `token_env` (when its variable is set) is one more, named `admin`, with the `admin` role.
    pub tokens: Vec<AdminToken>,
}

/// One named admin token (`admin.tokens[]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Recorded in the audit log as who made a change.
    pub name: String,
    /// The environment variable holding the token; unset disables the token (with a warning).
    pub env: String,
    pub role: Role,
    /// With `org:<id>`: may also set and remove its profiles' limits, never above the org's own.
    #[serde(default)]
    pub write_profiles: bool,
}

/// What an admin token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Read everything.
    Viewer,
    /// Read that org and its profiles.
    Org(String),
}

impl Role {
    pub fn describe(&self) -> String {
        match self {
            Role::Admin => "admin".into(),
            Role::Viewer => "viewer".into(),
            Role::Org(o) => format!("org:{o}"),
        }
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "admin" => Ok(Role::Admin),
            "viewer" => Ok(Role::Viewer),
            _ => match s.strip_prefix("org:") {
                Some(id) => crate::domain::tenant_id::validate_id(id)
                    .map(|()| Role::Org(id.to_string()))
                    .map_err(|e| serde::de::Error::custom(format!("`{s}`: bad org id: {e}"))),
                None => Err(serde::de::Error::custom(format!("`{s}` is not a role: use admin, viewer or org:<id>"))),
            },
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: ListenAddr("127.0.0.1:9090".parse().expect("static address")),
            token_env: "SPENDGATE_ADMIN_TOKEN".into(),
            public_metrics: false,
            tokens: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded store: counters in memory, every charge written to a SQLite database
    /// (`store.path`). `embedded` is the same backend under its newer name.
    #[default]
    #[serde(alias = "embedded")]
    Memory,
    Redis,
}

/// When the embedded store's writes are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Reservations and settlements are group-committed every `store.commit_interval`
    /// (a SIGKILL loses at most that interval's admitted requests).
    #[default]
    Batched,
    /// Each reservation is committed and synced to disk before its request is forwarded
    /// (group commit: concurrent reservations share one sync).
    Strict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Keep serving, enforce against what this replica knows, replay later.
    #[default]
    Open,
    /// Refuse with 503 while the store is unreachable.
    Closed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: Backend,
    /// Embedded only: the SQLite database (created when missing).
    pub path: PathBuf,
    /// Embedded only: see [`Durability`].
    pub durability: Durability,
    /// Embedded only: longest a written record waits before its batch is committed.
    pub commit_interval: Seconds,
    /// Embedded only: most records kept in memory while the database cannot be written
    /// (`on_error: open`); past it, requests are refused with 503.
    pub max_unwritten: usize,
    /// Deprecated (embedded only): the JSON snapshot file of earlier versions, imported into
    /// the database once at start.
    pub snapshot: Option<PathBuf>,
    /// Seconds between the store's periodic upkeep (the Redis outage journal's writes; the
    /// embedded store's sweep of windows no limit reads any more).
    pub snapshot_interval: Seconds,
    /// Redis only.
    pub url: String,
    /// Redis only: `url` is a seed node of a Redis Cluster.
    pub cluster: bool,
    /// Redis only, with `rediss://`: PEM file of the CA(s) that signed the server's
    /// certificate, instead of the public web roots.
    pub tls_ca_file: Option<PathBuf>,
    pub key_prefix: String,
    pub on_error: OnError,
    /// Longest a store call on the request path may take before `on_error` applies.
    pub timeout: Seconds,
    /// Redis only: longest a read for the admin plane (usage, tenants, readiness) or a
    /// journal replay may take.
    pub read_timeout: Seconds,
    /// Redis only: file that journals what was counted while Redis was unreachable.
    pub journal: Option<PathBuf>,
    /// Most entries the outage journal keeps.
    pub journal_max_entries: usize,
    pub retention: RetentionConfig,
    /// How many recent requests are kept per tenant for the usage API.
    pub recent_max: usize,
    /// Most distinct attribution tags kept per tenant in the history; a tenant's further new
    /// tags are recorded as `other`.
    pub max_tags: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Memory,
            path: PathBuf::from("spendgate.db"),
            durability: Durability::Batched,
            commit_interval: Seconds::from_millis(10),
            max_unwritten: 100_000,
            snapshot: None,
            snapshot_interval: Seconds::from_secs(10),
            url: "redis://127.0.0.1:6379/0".into(),
            cluster: false,
            tls_ca_file: None,
            key_prefix: "spendgate".into(),
            on_error: OnError::Open,
            timeout: Seconds::from_millis(50),
            read_timeout: Seconds::from_secs(2),
            journal: None,
            journal_max_entries: 100_000,
            retention: RetentionConfig::default(),
            recent_max: 100,
            max_tags: 100,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub daily_days: u32,
    pub monthly_months: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            daily_days: 400,
            monthly_months: 25,
        }
    }
}

/// What to do with a request that carries no profile header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Missing {
    /// Answer 400 `tenant_missing`.
    #[default]
    Reject,
    /// Charge this profile instead.
    Profile(String),
}

impl<'de> Deserialize<'de> for Missing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "reject" {
            return Ok(Missing::Reject);
        }
        crate::domain::tenant_id::validate_id(&s).map_err(|e| serde::de::Error::custom(format!("`{s}` is neither `reject` nor a valid profile id: {e}")))?;
        Ok(Missing::Profile(s))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    pub profile_header: String,
    /// Empty string or null turns the org level off.
    pub org_header: Option<String>,
    pub missing: Missing,
    /// Remove the tenant headers before forwarding upstream.
    pub strip: bool,
    /// The optional header of attribution tags (`tool=script-writer`, comma-separated, at most
    /// 4); always removed before forwarding. Empty string or null turns tags off.
    pub tag_header: Option<String>,
    /// Org id -> its profiles. A profile belongs to one org: one named here always counts
    /// for it; any other keeps the first org it is seen with (remembered in the store).
    pub orgs: BTreeMap<String, Vec<String>>,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            profile_header: "X-Profile-Id".into(),
            org_header: Some("X-Org-Id".into()),
            missing: Missing::Reject,
            strip: true,
            tag_header: Some("X-Spendgate-Tag".into()),
            orgs: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Largest request body buffered to estimate a metered call, in bytes.
    pub max_request_body: usize,
    /// Most bytes of request bodies buffered at once, over all requests; past it new
    /// metered requests are answered 503 `overloaded`.
    pub max_buffered_bytes: u64,
    /// Longest a metered request's body may take to arrive.
    pub body_timeout: Seconds,
    /// Interval of HTTP/2 keep-alive pings to clients (a peer that does not answer within
    /// the same time is disconnected).
    pub h2_keepalive: Seconds,
    /// An HTTP/1.1 or HTTP/2 client connection with no request in flight for this long is
    /// closed.
    pub idle_timeout: Seconds,
    /// On SIGTERM, how long in-flight requests may take to finish.
    pub shutdown_grace: Seconds,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_request_body: 64 * 1024 * 1024,
            max_buffered_bytes: 256 * 1024 * 1024,
            body_timeout: Seconds::from_secs(60),
            h2_keepalive: Seconds::from_secs(30),
            idle_timeout: Seconds::from_secs(300),
            shutdown_grace: Seconds::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Elevenlabs,
    Gemini,
    Vertex,
    Openai,
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Elevenlabs => "elevenlabs",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Vertex => "vertex",
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Path prefix on the data plane, e.g. `/gemini`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Base URL of the real API (`https://...`, or `http://` for local tests).
    pub upstream: String,
    /// Inject this environment variable as the provider's credential.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// A dedicated port that mounts this provider at `/`.
    #[serde(default)]
    pub listen: Option<ListenAddr>,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// What to do with a call to an endpoint the proxy cannot meter.
    #[serde(default)]
    pub unmetered: Unmetered,
    /// Which certificate authorities an `https://` upstream's certificate may chain to.
    #[serde(default)]
    pub tls_roots: TlsRoots,
    /// PEM file of further CAs to trust for this upstream: a private CA, or the CA of a
    /// TLS-inspecting egress gateway.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// How connections to the upstream leave the host.
    #[serde(default)]
    pub proxy: EgressProxy,
}

/// `providers.<name>.tls_roots`: the built-in trust anchors of an `https://` upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsRoots {
    /// Mozilla's root program, compiled into the binary (same on every host).
    #[default]
    Webpki,
    /// The operating system's store (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
    System,
    /// None: only the CAs of `tls_ca_file`.
    None,
}

/// `providers.<name>.proxy`: an HTTP proxy the upstream is reached through (a `CONNECT`
/// tunnel, so TLS stays end to end between spendgate and the provider).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EgressProxy {
    /// For an `https://` upstream, `HTTPS_PROXY` (or `https_proxy`, then `ALL_PROXY`,
    /// `all_proxy`) with `NO_PROXY` / `no_proxy` from the environment; loopback upstreams and
    /// `http://` upstreams are always reached directly.
    #[default]
    Env,
    /// Always direct, whatever the environment says.
    Direct,
    /// This proxy, `http://[user:password@]host:port`, for every connection (loopback and
    /// `http://` upstreams included; an `http://` upstream's requests then cross the tunnel
    /// in clear text, as they would cross the network without it).
    Via(String),
}

impl<'de> Deserialize<'de> for EgressProxy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "env" => EgressProxy::Env,
            "none" => EgressProxy::Direct,
            _ => EgressProxy::Via(s),
        })
    }
}

/// `providers.<name>.unmetered`: calls to endpoints the proxy cannot charge.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Unmetered {
    /// Answer 403 `endpoint_not_metered`.
    #[default]
    Reject,
    /// Forward them; they count against requests limits only.
    Allow,
    /// Forward them and charge this many nano-dollars per call.
    Charge(i64),
}

impl<'de> Deserialize<'de> for Unmetered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Charge {
            charge_usd: NonNegative,
        }
        const EXPECTED: &str = "`reject`, `allow` or `{charge_usd: <USD per call>}`";
        match serde_norway::Value::deserialize(d)? {
            serde_norway::Value::String(w) if w == "reject" => Ok(Unmetered::Reject),
            serde_norway::Value::String(w) if w == "allow" => Ok(Unmetered::Allow),
            v @ serde_norway::Value::Mapping(_) => Charge::deserialize(v)
                .map(|c| Unmetered::Charge(crate::domain::money::usd_to_nanos(c.charge_usd.0)))
                .map_err(|e| D::Error::custom(format!("expected {EXPECTED}: {e}"))),
            _ => Err(D::Error::custom(format!("expected {EXPECTED}"))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// TCP + TLS connect.
    pub connect: Seconds,
    /// Longest silence while waiting for response headers or the next body chunk.
    pub read_idle: Seconds,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            connect: Seconds::from_secs(10),
            read_idle: Seconds::from_secs(300),
        }
    }
}

fn default_providers() -> BTreeMap<String, ProviderConfig> {
    let p = |kind, prefix: &str, upstream: &str| ProviderConfig {
        kind,
        prefix: Some(prefix.into()),
        upstream: upstream.into(),
        api_key_env: None,
        listen: None,
        timeouts: TimeoutsConfig::default(),
        unmetered: Unmetered::Reject,
        tls_roots: TlsRoots::Webpki,
        tls_ca_file: None,
        proxy: EgressProxy::Env,
    };
    BTreeMap::from([
        ("elevenlabs".into(), p(ProviderKind::Elevenlabs, "/elevenlabs", "https://api.elevenlabs.io")),
        ("gemini".into(), p(ProviderKind::Gemini, "/gemini", "https://generativelanguage.googleapis.com")),
        ("openai".into(), p(ProviderKind::Openai, "/openai", "https://api.openai.com")),
        ("anthropic".into(), p(ProviderKind::Anthropic, "/anthropic", "https://api.anthropic.com")),
    ])
}

/// Prices in USD for one model glob. Absent units cost nothing for that model.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PriceSpec {
    pub input_per_mtok: Option<NonNegative>,
    pub cached_input_per_mtok: Option<NonNegative>,
    /// Prompt-cache writes (Anthropic 5-minute TTL).
    pub cache_write_per_mtok: Option<NonNegative>,
    /// Prompt-cache writes with a 1-hour TTL (Anthropic).
    pub cache_write_1h_per_mtok: Option<NonNegative>,
    pub output_per_mtok: Option<NonNegative>,
    pub audio_input_per_mtok: Option<NonNegative>,
    pub audio_output_per_mtok: Option<NonNegative>,
    pub image_output_per_mtok: Option<NonNegative>,
    pub per_1k_chars: Option<NonNegative>,
    pub per_1m_chars: Option<NonNegative>,
    pub per_image: Option<NonNegative>,
    pub per_video_second: Option<NonNegative>,
    pub per_audio_hour: Option<NonNegative>,
    pub per_request: Option<NonNegative>,
    pub per_web_search: Option<NonNegative>,
    /// Per file search tool call (OpenAI Responses).
    pub per_file_search: Option<NonNegative>,
    /// Per code interpreter container (OpenAI Responses).
    pub per_code_session: Option<NonNegative>,
    /// A higher rate for the whole request when the prompt exceeds a token threshold.
    pub long_context: Option<LongContextSpec>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LongContextSpec {
    pub above_tokens: u64,
    #[serde(default)]
    pub input_per_mtok: Option<NonNegative>,
    #[serde(default)]
    pub cached_input_per_mtok: Option<NonNegative>,
    #[serde(default)]
    pub output_per_mtok: Option<NonNegative>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Unpriced {
    /// Charge the provider's most expensive listed price.
    #[default]
    Default,
    /// Refuse calls to models without a price.
    Reject,
    /// Charge nothing (must be chosen explicitly).
    Zero,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReserveConfig {
    /// Output tokens reserved for an LLM call: `max_tokens` capped at this value (or this
    /// value when the request names none).
    pub max_output_tokens: u64,
    /// Bytes of request text per estimated input token.
    pub bytes_per_token: u64,
}

impl Default for ReserveConfig {
    fn default() -> Self {
        Self {
            max_output_tokens: 4096,
            bytes_per_token: 4,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub default_profile: Vec<LimitSpec>,
    pub default_org: Vec<LimitSpec>,
    pub profiles: BTreeMap<String, Vec<LimitSpec>>,
    pub orgs: BTreeMap<String, Vec<LimitSpec>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    pub metric: Metric,
    pub window: Window,
    pub max: Positive,
    #[serde(default)]
    pub alert_at: AlertAt,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, rename = "match")]
    pub matcher: Option<MatchSpec>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Provider name (as under `providers:`) or kind.
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub model: Option<Pattern>,
    /// Glob on the upstream path (after the prefix), e.g. `/v1/audio/*`.
    #[serde(default)]
    pub path: Option<Pattern>,
    /// Glob on the request's attribution tags (`tool=script-writer`): matches when any tag does.
    #[serde(default)]
    pub tag: Option<Pattern>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Label series by tenant at all.
    pub tenant_labels: bool,
    /// Most tenants that get their own label; the rest are folded into `other`.
    pub max_tenants: usize,
    /// Export spend per attribution tag (`spendgate_tag_cost_usd_total{tag}`,
    /// `spendgate_tag_requests_total{tag}`).
    pub tag_labels: bool,
    /// Most tags that get their own label; the rest are folded into `other`.
    pub max_tags: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            tenant_labels: true,
            max_tenants: 1000,
            tag_labels: false,
            max_tags: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    #[default]
    Json,
    Slack,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// POST a JSON event here when a limit crosses one of its `alert_at` thresholds.
    pub webhook_url: Option<String>,
    /// The webhook body: `json` (spendgate's event) or `slack` (a Slack incoming-webhook
    /// message, `{"text": ...}`, which Slack-compatible chat tools also accept).
    pub format: AlertFormat,
    pub timeout: Seconds,
    pub retries: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            format: AlertFormat::Json,
            timeout: Seconds::from_secs(5),
            retries: 3,
        }
    }
}
