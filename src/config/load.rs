//! Reading a config file: parse with key paths and lines, then the checks that span keys.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use http::Uri;

use super::{Backend, Config};

/// The configuration used when no file is named: the documented example.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config.example.yaml");

/// A configuration that cannot be used, with the key (and line, when the parser knows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source_name: String,
    /// Dotted key path, e.g. `limits.profiles.p-123[0].max`.
    pub key: Option<String>,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source_name)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: path.display().to_string(),
            key: None,
            line: None,
            message: format!("cannot read the file: {e}"),
        })?;
        Config::from_yaml(&text, &path.display().to_string())
    }

    /// The named file, or the embedded default when none is named.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Config::from_file(p),
            None => Ok(Config::embedded_default()),
        }
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Config {
        Config::from_yaml(EMBEDDED_DEFAULT, "<embedded config.example.yaml>").expect("the embedded example config is valid")
    }

    /// Parses and validates YAML text; `source_name` names it in errors.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let err = |key: Option<String>, line: Option<usize>, message: String| ConfigError {
            source_name: source_name.to_string(),
            key,
            line,
            message,
        };
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            let de = serde_norway::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let line = inner.location().map(|l| l.line());
                let mut message = inner.to_string();
                // The parser appends its own location; it is already in `line`.
                if let Some(at) = message.rfind(" at line ") {
                    message.truncate(at);
                }
                let key = (path != "." && !path.is_empty()).then_some(path);
                err(key, line, message)
            })?
        };
        let mut config = config;
        config.normalize();
        config.validate().map_err(|(key, message)| {
            let line = find_key_line(text, &key);
            err(Some(key), line, message)
        })?;
        Ok(config)
    }

    fn normalize(&mut self) {
        if self.tenant.org_header.as_deref().is_some_and(|h| h.trim().is_empty()) {
            self.tenant.org_header = None;
        }
        if self.tenant.tag_header.as_deref().is_some_and(|h| h.trim().is_empty()) {
            self.tenant.tag_header = None;
        }
    }

    /// Checks that span several keys. Returns the offending key and a message.
    fn validate(&self) -> Result<(), (String, String)> {
        let header_ok = |h: &str| http::HeaderName::from_bytes(h.as_bytes()).is_ok();
        if !header_ok(&self.tenant.profile_header) {
            return Err((
                "tenant.profile_header".into(),
                format!("`{}` is not a valid header name", self.tenant.profile_header),
            ));
        }
        if let Some(h) = &self.tenant.org_header {
            if !header_ok(h) {
                return Err(("tenant.org_header".into(), format!("`{h}` is not a valid header name")));
            }
            if h.eq_ignore_ascii_case(&self.tenant.profile_header) {
                return Err(("tenant.org_header".into(), "must differ from tenant.profile_header".into()));
            }
        }
        if let Some(h) = &self.tenant.tag_header {
            if !header_ok(h) {
                return Err(("tenant.tag_header".into(), format!("`{h}` is not a valid header name")));
            }
            let tenant_headers = std::iter::once(&self.tenant.profile_header).chain(self.tenant.org_header.as_ref());
            if tenant_headers.into_iter().any(|t| t.eq_ignore_ascii_case(h)) {
                return Err(("tenant.tag_header".into(), "must differ from the profile and org headers".into()));
            }
        }
        let mut org_of: BTreeMap<&str, &str> = BTreeMap::new();
        for (org, profiles) in &self.tenant.orgs {
            let key = format!("tenant.orgs.{org}");
            crate::domain::tenant_id::validate_id(org).map_err(|e| (key.clone(), format!("bad org id: {e}")))?;
            for p in profiles {
                crate::domain::tenant_id::validate_id(p).map_err(|e| (key.clone(), format!("bad profile id `{p}`: {e}")))?;
                if let Some(other) = org_of.insert(p, org) {
                    return Err((key, format!("profile `{p}` is also listed under org `{other}`; a profile belongs to one org")));
                }
            }
        }

        let mut names = BTreeSet::new();
        for (i, t) in self.admin.tokens.iter().enumerate() {
            let key = format!("admin.tokens[{i}]");
            crate::domain::tenant_id::validate_id(&t.name).map_err(|e| (format!("{key}.name"), format!("bad token name: {e}")))?;
            if t.name == "admin" && !self.admin.token_env.is_empty() || !names.insert(t.name.as_str()) {
                return Err((
                    format!("{key}.name"),
                    format!("the name `{}` is already used (`admin` is the token of admin.token_env)", t.name),
                ));
            }
            if t.env.is_empty() || t.env.contains('=') {
                return Err((format!("{key}.env"), format!("`{}` is not an environment variable name", t.env)));
            }
            if t.write_profiles && !matches!(t.role, super::Role::Org(_)) {
                return Err((format!("{key}.write_profiles"), "only an org:<id> token can be given write_profiles".into()));
            }
        }

        let mut listens = vec![("listen".to_string(), self.listen.0)];
        listens.push(("admin.listen".into(), self.admin.listen.0));
        if self.providers.is_empty() {
            return Err(("providers".into(), "at least one provider is needed".into()));
        }
        let mut prefixes: Vec<(String, String)> = Vec::new();
        for (name, p) in &self.providers {
            let key = format!("providers.{name}");
            crate::domain::tenant_id::validate_id(name).map_err(|e| (key.clone(), format!("bad provider name: {e}")))?;
            validate_upstream(&p.upstream).map_err(|m| (format!("{key}.upstream"), m))?;
            if let Some(l) = p.listen {
                listens.push((format!("{key}.listen"), l.0));
            }
            match &p.prefix {
                Some(prefix) => {
                    if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
                        return Err((
                            format!("{key}.prefix"),
                            format!("`{prefix}` must start with `/`, not end with `/`, and not be `/` alone"),
                        ));
                    }
                    if prefix.contains(['?', '#', ' ']) {
                        return Err((format!("{key}.prefix"), format!("`{prefix}` must be a plain path")));
                    }
                    for (other, other_prefix) in &prefixes {
                        if overlaps(prefix, other_prefix) {
                            let what = if prefix == other_prefix { "duplicates" } else { "overlaps" };
                            return Err((
                                format!("{key}.prefix"),
                                format!("`{prefix}` {what} the prefix `{other_prefix}` of provider `{other}`"),
                            ));
                        }
                    }
                    prefixes.push((name.clone(), prefix.clone()));
                }
                None if p.listen.is_none() => {
                    return Err((format!("{key}.prefix"), "a provider needs a prefix, a dedicated listen address, or both".into()));
                }
                None => {}
            }
            if p.tls_roots == super::TlsRoots::None && p.tls_ca_file.is_none() {
                return Err((format!("{key}.tls_roots"), "`none` trusts nothing without a `tls_ca_file`".into()));
            }
            if let super::EgressProxy::Via(url) = &p.proxy {
                validate_proxy(url).map_err(|m| (format!("{key}.proxy"), m))?;
            }
            if let Some(env) = &p.api_key_env {
                if env.is_empty() || env.contains('=') {
                    return Err((format!("{key}.api_key_env"), format!("`{env}` is not an environment variable name")));
                }
            }
        }
        for (i, (k, a)) in listens.iter().enumerate() {
            if let Some((k2, _)) = listens[..i].iter().find(|(_, b)| b == a && a.port() != 0) {
                return Err((k.clone(), format!("{a} is already used by {k2}")));
            }
        }

        let known_provider = |s: &str| self.providers.contains_key(s) || self.providers.values().any(|p| p.kind.as_str() == s);
        for (provider, models) in &self.pricing {
            if !known_provider(provider) {
                return Err((
                    format!("pricing.{provider}"),
                    format!("no provider named or of kind `{provider}` is configured"),
                ));
            }
            for model in models.keys() {
                super::Pattern::new(model).map_err(|m| (format!("pricing.{provider}.{model}"), m))?;
            }
        }

        let lists = [
            ("limits.default_profile".to_string(), &self.limits.default_profile),
            ("limits.default_org".to_string(), &self.limits.default_org),
        ]
        .into_iter()
        .chain(self.limits.profiles.iter().map(|(id, l)| (format!("limits.profiles.{id}"), l)))
        .chain(self.limits.orgs.iter().map(|(id, l)| (format!("limits.orgs.{id}"), l)));
        for (key, list) in lists {
            if let Some(id) = key.strip_prefix("limits.profiles.").or_else(|| key.strip_prefix("limits.orgs.")) {
                crate::domain::tenant_id::validate_id(id).map_err(|e| (key.clone(), e.to_string()))?;
            }
            let mut seen = BTreeSet::new();
            for (i, limit) in list.iter().enumerate() {
                if let Some(m) = &limit.matcher {
                    if let Some(p) = &m.provider {
                        if !known_provider(p) {
                            return Err((
                                format!("{key}[{i}].match.provider"),
                                format!("no provider named or of kind `{p}` is configured"),
                            ));
                        }
                    }
                }
                let identity = (limit.metric, limit.window, format!("{:?}", limit.matcher));
                if !seen.insert(identity) {
                    return Err((
                        format!("{key}[{i}]"),
                        format!("a second {} {} limit with the same match; merge them", limit.window, limit.metric),
                    ));
                }
            }
        }

        match self.store.backend {
            Backend::Redis => {
                // With `cluster`, several seed nodes may be given, comma-separated.
                let urls: Vec<&str> = if self.store.cluster {
                    self.store.url.split(',').map(str::trim).collect()
                } else {
                    vec![self.store.url.as_str()]
                };
                if let Some(bad) = urls.iter().find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://"))) {
                    return Err(("store.url".into(), format!("`{bad}` must start with redis:// or rediss://")));
                }
                if self.store.tls_ca_file.is_some() && !urls.iter().all(|u| u.starts_with("rediss://")) {
                    return Err(("store.tls_ca_file".into(), "is only used with rediss:// URLs".into()));
                }
                if self.store.journal_max_entries == 0 {
                    return Err(("store.journal_max_entries".into(), "must be at least 1".into()));
                }
                if self.store.snapshot.is_some() {
                    return Err(("store.snapshot".into(), "only the memory backend uses a snapshot file".into()));
                }
            }
            Backend::Memory => {
                if self.store.cluster {
                    return Err(("store.cluster".into(), "only the redis backend can use a cluster".into()));
                }
                if self.store.journal.is_some() {
                    return Err(("store.journal".into(), "only the redis backend keeps an outage journal".into()));
                }
                if self.store.path.as_os_str().is_empty() {
                    return Err(("store.path".into(), "must name the database file".into()));
                }
                if self.store.commit_interval.0 > std::time::Duration::from_secs(1) {
                    return Err(("store.commit_interval".into(), "must be at most 1 second".into()));
                }
                if self.store.max_unwritten == 0 {
                    return Err(("store.max_unwritten".into(), "must be at least 1".into()));
                }
            }
        }
        if self.store.key_prefix.is_empty() || self.store.key_prefix.contains(['{', '}', ' ']) {
            return Err(("store.key_prefix".into(), "must be non-empty without braces or spaces".into()));
        }
        if self.store.max_tags == 0 {
            return Err(("store.max_tags".into(), "must be at least 1".into()));
        }
        if self.reserve.bytes_per_token == 0 {
            return Err(("reserve.bytes_per_token".into(), "must be at least 1".into()));
        }
        if let Some(url) = &self.alerts.webhook_url {
            validate_upstream(url).map_err(|m| ("alerts.webhook_url".to_string(), m))?;
        }
        Ok(())
    }

    /// Where the snapshot lives, if any (memory backend only).
    pub fn snapshot_path(&self) -> Option<&PathBuf> {
        self.store.snapshot.as_ref()
    }
}

/// Two prefixes overlap when one is the other or a whole-segment prefix of it.
fn overlaps(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long == short || (long.starts_with(short) && long.as_bytes()[short.len()] == b'/')
}

fn validate_upstream(url: &str) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("`{url}` must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}` must not carry a query string"));
    }
    Ok(())
}

/// An egress proxy URL: `http://[user:password@]host[:port]` (a `CONNECT` tunnel is opened
/// through it; TLS to the proxy itself and SOCKS are not spoken).
pub(crate) fn validate_proxy(url: &str) -> Result<(), String> {
    const FORM: &str = "`env`, `none` or `http://[user:password@]host:port`";
    let shown = redact_userinfo(url);
    let url = shown.as_str();
    let uri: Uri = url.parse().map_err(|e| format!("`{url}` is not {FORM}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("`{url}`: only http:// proxies are supported (expected {FORM})"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
        return Err(format!("`{url}` must not have a path"));
    }
    Ok(())
}

/// A proxy URL as it may be shown: any `user:password@` replaced by `***@`. The userinfo
/// ends at the last `@` before the path (a password may hold `@`, `/` or `#` unescaped).
pub(crate) fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Best-effort line of a dotted key in the text, for checks made after parsing.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let segments: Vec<&str> = key.split('.').map(|s| s.split('[').next().unwrap_or(s)).filter(|s| !s.is_empty()).collect();
    let mut from = 0usize;
    let mut found = None;
    let lines: Vec<&str> = text.lines().collect();
    for seg in segments {
        let hit = lines.iter().enumerate().skip(from).find(|(_, l)| {
            let t = l.trim_start().trim_start_matches("- ");
            let t = t.trim_start_matches('{').trim_start();
            t.starts_with(&format!("{seg}:")) || t.starts_with(&format!("\"{seg}\":")) || t.starts_with(&format!("'{seg}':"))
        });
        match hit {
            Some((i, _)) => {
                found = Some(i + 1);
                from = i + 1;
            }
            None => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(y, "test.yaml")
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.providers.len(), 4);
        assert_eq!(c.store.timeout.0, std::time::Duration::from_millis(50));
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default();
        assert!(!c.providers.is_empty());
    }

    #[test]
    fn unknown_metric_names_key_and_line() {
        let e = parse("limits:\n  default_profile:\n    - {metric: dollars, window: daily, max: 1}\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.default_profile[0].metric"));
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("unknown variant `dollars`"), "{e}");
    }

    #[test]
    fn admin_tokens_have_roles_and_unique_names() {
        let c = parse("admin:\n  tokens:\n    - {name: ops, env: T_OPS, role: admin}\n    - {name: ro, env: T_RO, role: viewer}\n    - {name: acme, env: T_ACME, role: \"org:acme\", write_profiles: true}\n").unwrap();
        assert_eq!(c.admin.tokens[2].role, super::super::Role::Org("acme".into()));
        let key = |y: &str| parse(y).unwrap_err().key;
        assert_eq!(
            key("admin:\n  tokens:\n    - {name: x, env: T, role: root}\n").as_deref(),
            Some("admin.tokens[0].role")
        );
        assert_eq!(
            key("admin:\n  tokens:\n    - {name: x, env: T, role: \"org:a b\"}\n").as_deref(),
            Some("admin.tokens[0].role")
        );
        assert_eq!(
            key("admin:\n  tokens:\n    - {name: x, env: T, role: admin}\n    - {name: x, env: U, role: viewer}\n").as_deref(),
            Some("admin.tokens[1].name")
        );
        assert_eq!(
            key("admin:\n  tokens:\n    - {name: admin, env: T, role: viewer}\n").as_deref(),
            Some("admin.tokens[0].name")
        );
        assert_eq!(
            key("admin:\n  tokens:\n    - {name: x, env: \"\", role: admin}\n").as_deref(),
            Some("admin.tokens[0].env")
        );
        assert_eq!(
            key("admin:\n  tokens:\n    - {name: x, env: T, role: viewer, write_profiles: true}\n").as_deref(),
            Some("admin.tokens[0].write_profiles")
        );
        assert_eq!(
            key("admin:\n  tokens:\n    - {name: x, env: T, role: admin, colour: red}\n").as_deref(),
            Some("admin.tokens[0].colour")
        );
    }

    #[test]
    fn unknown_window() {
        let e = parse("limits:\n  default_org:\n    - metric: cost_usd\n      window: weekly\n      max: 1\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.default_org[0].window"));
        assert_eq!(e.line, Some(4));
    }

    #[test]
    fn rate_windows_parse() {
        let c = parse("limits:\n  default_profile:\n    - {metric: requests, window: minute, max: 60}\n    - {metric: tokens, window: hour, max: 100000}\n    - {metric: requests, window: daily, max: 1000}\n").unwrap();
        let windows: Vec<_> = c.limits.default_profile.iter().map(|l| l.window.as_str()).collect();
        assert_eq!(windows, ["minute", "hour", "daily"]);
        let e = parse("limits:\n  default_org:\n    - {metric: requests, window: second, max: 1}\n").unwrap_err();
        assert!(e.to_string().contains("minute") && e.to_string().contains("hour"), "{e}");
    }

    #[test]
    fn zero_and_negative_max() {
        for v in ["0", "-3"] {
            let e = parse(&format!(
                "limits:\n  profiles:\n    p-1:\n      - {{metric: requests, window: daily, max: {v}}}\n"
            ))
            .unwrap_err();
            assert_eq!(e.key.as_deref(), Some("limits.profiles.p-1[0].max"), "{e}");
            assert!(e.message.contains("greater than 0"), "{e}");
        }
    }

    #[test]
    fn bad_glob() {
        let e = parse("limits:\n  orgs:\n    acme:\n      - {metric: requests, window: daily, max: 5, match: {model: \"imagen-[\"}}\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.orgs.acme[0].match.model"), "{e}");
        assert!(e.message.contains("bad glob"), "{e}");
        let e = parse("pricing:\n  gemini:\n    \"gem[\": {input_per_mtok: 1}\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("pricing.gemini.gem["), "{e}");
    }

    #[test]
    fn duplicate_and_overlapping_prefixes() {
        let y = "providers:\n  a: {kind: gemini, prefix: /g, upstream: \"http://127.0.0.1:1\"}\n  b: {kind: openai, prefix: /g, upstream: \"http://127.0.0.1:1\"}\n";
        let e = parse(y).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("providers.b.prefix"));
        assert!(e.message.contains("duplicates"), "{e}");
        assert_eq!(e.line, Some(3));
        let y = "providers:\n  a: {kind: gemini, prefix: /g, upstream: \"http://127.0.0.1:1\"}\n  b: {kind: openai, prefix: /g/x, upstream: \"http://127.0.0.1:1\"}\n";
        assert!(parse(y).unwrap_err().message.contains("overlaps"));
        let y = "providers:\n  a: {kind: gemini, prefix: /g, upstream: \"http://127.0.0.1:1\"}\n  b: {kind: openai, prefix: /gx, upstream: \"http://127.0.0.1:1\"}\n";
        assert!(parse(y).is_ok());
    }

    #[test]
    fn bad_listen_zone_and_kind() {
        let e = parse("listen: \"localhost:eighty\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("listen"));
        assert_eq!(e.line, Some(1));
        let e = parse("timezone: Mars/Olympus\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("timezone"));
        assert!(e.message.contains("unknown time zone"));
        let e = parse("providers:\n  x: {kind: mistral, prefix: /x, upstream: \"http://a\"}\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("providers.x.kind"));
        assert!(e.message.contains("unknown variant `mistral`"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("store:\n  backnd: redis\n").unwrap_err();
        assert!(e.message.contains("unknown field `backnd`"), "{e}");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn missing_may_name_a_profile() {
        let c = parse("tenant:\n  missing: anonymous\n").unwrap();
        assert_eq!(c.tenant.missing, super::super::Missing::Profile("anonymous".into()));
        assert!(parse("tenant:\n  missing: \"bad id!\"\n").is_err());
    }

    #[test]
    fn redis_store_keys() {
        let c = parse("store:\n  backend: redis\n  cluster: true\n  url: \"redis://a:1, redis://b:2\"\n  read_timeout: 1.5\n").unwrap();
        assert_eq!(c.store.read_timeout.0, std::time::Duration::from_millis(1500));
        let e = parse("store:\n  backend: redis\n  cluster: true\n  url: \"redis://a:1,http://b:2\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("store.url"));
        assert!(e.message.contains("http://b:2"), "{e}");
        let e = parse("store:\n  backend: redis\n  url: \"redis://a:1\"\n  tls_ca_file: ca.pem\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("store.tls_ca_file"));
        assert!(parse("store:\n  backend: redis\n  url: \"rediss://a:1\"\n  tls_ca_file: ca.pem\n").is_ok());
        let e = parse("store:\n  journal: j.ndjson\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("store.journal"));
        let e = parse("store:\n  backend: redis\n  journal_max_entries: 0\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("store.journal_max_entries"));
    }

    #[test]
    fn match_provider_must_exist() {
        let e = parse("limits:\n  default_profile:\n    - {metric: requests, window: daily, max: 5, match: {provider: nope}}\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.default_profile[0].match.provider"));
    }
}
