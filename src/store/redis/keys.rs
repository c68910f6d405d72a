//! The Redis key schema (documented in `docs/redis.md`).
//!
//! Every key one request touches carries the same hash tag, so that the check-and-reserve
//! and the settlement of a request run as one script in one hash slot on Redis Cluster. The
//! tag is the request's org when it has one (`{o:acme}`), else its profile (`{p:p-123}`):
//! an org and all of its profiles live in one slot, and a profile's counters for requests
//! under an org live in that org's slot. The per-profile index of those slots (`homes`) and
//! the tenant registries are written outside the scripts; they only serve the usage API.

use std::fmt;

use crate::domain::window::Window;
use crate::domain::Scope;
use crate::quota::ledger::CounterKey;

/// The hash tag shared by every key of one request, without the braces: `o:<org>` or
/// `p:<profile>`. Tenant ids never contain braces (see `tenant::validate_id`), so the tag
/// is always well formed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The tag of a request of `profile`, under `org` when it has one.
    pub fn for_request(profile: &str, org: Option<&str>) -> Tag {
        match org {
            Some(o) => Tag::own(Scope::Org, o),
            None => Tag::own(Scope::Profile, profile),
        }
    }

    /// The tenant's own tag: where an org's keys live, and a profile's keys for requests
    /// without an org.
    pub fn own(scope: Scope, tenant: &str) -> Tag {
        Tag(format!("{}:{tenant}", scope.tag()))
    }

    /// The tag of a request from the counters it touches: its org's when one of them
    /// belongs to an org, else its profile's. `None` when there are no counters.
    pub fn of_counters<'a>(keys: impl Iterator<Item = &'a CounterKey> + Clone) -> Option<Tag> {
        let org = keys.clone().find(|k| k.scope == Scope::Org);
        org.map(|k| Tag::own(Scope::Org, &k.tenant))
            .or_else(|| keys.clone().find(|k| k.scope == Scope::Profile).map(|k| Tag::own(Scope::Profile, &k.tenant)))
    }

    /// A tag read back from the `homes` index; `None` when it is not one this schema writes.
    pub fn parse(s: &str) -> Option<Tag> {
        let (scope, id) = s.split_once(':')?;
        let ok = matches!(scope, "o" | "p") && crate::domain::tenant_id::validate_id(id).is_ok();
        ok.then(|| Tag(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Redis Cluster hash slot of every key carrying this tag.
    pub fn slot(&self) -> u16 {
        crc16(self.0.as_bytes()) % 16_384
    }
}

/// CRC-16/XMODEM, the checksum Redis Cluster maps keys to slots with.
fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |mut crc, &b| {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
        crc
    })
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds key names under the configured prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

fn window_letter(w: Window) -> char {
    match w {
        Window::Minute => 'i',
        Window::Hour => 'h',
        Window::Daily => 'd',
        Window::Monthly => 'm',
    }
}

/// `d` for a day id (`2026-11-22`), `m` for a month id (`2026-11`).
pub fn period_letter(period: &str) -> char {
    if period.len() == 7 {
        'm'
    } else {
        'd'
    }
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_string() }
    }

    /// The hash of a tenant's counters in one window: `<prefix>:{<tag>}:c:<p|o>:<tenant>:<i|h|d|m>:<bucket>`
    /// (`i` a minute, `h` an hour, `d` a day, `m` a month).
    /// Its fields are the counter fields (`cost`, `tokens`, `requests`, `chars`, `requests#<match>`...).
    pub fn counter(&self, tag: &Tag, key: &CounterKey) -> String {
        format!(
            "{}:{{{tag}}}:c:{}:{}:{}:{}",
            self.prefix,
            key.scope.tag(),
            key.tenant,
            window_letter(key.window),
            key.bucket
        )
    }

    /// The hash of a tenant's settled usage in one day or month:
    /// `<prefix>:{<tag>}:h:<p|o>:<tenant>:<d|m>:<period>`.
    pub fn history(&self, tag: &Tag, scope: Scope, tenant: &str, period: &str) -> String {
        format!("{}:{{{tag}}}:h:{}:{tenant}:{}:{period}", self.prefix, scope.tag(), period_letter(period))
    }

    /// The set of a tenant's distinct attribution tags (at most `store.max_tags`):
    /// `<prefix>:{<tag>}:g:<p|o>:<tenant>`.
    pub fn tag_set(&self, tag: &Tag, scope: Scope, tenant: &str) -> String {
        format!("{}:{{{tag}}}:g:{}:{tenant}", self.prefix, scope.tag())
    }

    /// The capped list of a tenant's recent requests (JSON, newest first):
    /// `<prefix>:{<tag>}:r:<p|o>:<tenant>`.
    pub fn recent(&self, tag: &Tag, scope: Scope, tenant: &str) -> String {
        format!("{}:{{{tag}}}:r:{}:{tenant}", self.prefix, scope.tag())
    }

    /// The hash of the ids of calls made in one UTC hour (`2026112214`) that were applied:
    /// `<prefix>:{<tag>}:n:<hour>`. Kept two hours, so a call given up on and its journal
    /// replay never both count.
    pub fn calls(&self, tag: &Tag, hour: &str) -> String {
        format!("{}:{{{tag}}}:n:{hour}", self.prefix)
    }

    /// The set of journal entry ids already replayed, per UTC day the entries were made:
    /// `<prefix>:{<tag>}:j:<day>`. Kept a week, so an interrupted replay retried later
    /// never counts twice.
    pub fn applied(&self, tag: &Tag, day: &str) -> String {
        format!("{}:{{{tag}}}:j:{day}", self.prefix)
    }

    /// The sorted set of the tags a profile's data lives under (score: last seen):
    /// `<prefix>:{p:<profile>}:homes`.
    pub fn homes(&self, profile: &str) -> String {
        format!("{}:{{p:{profile}}}:homes", self.prefix)
    }

    /// The org a profile belongs to ("" for none): `<prefix>:{p:<profile>}:org`.
    pub fn org_of(&self, profile: &str) -> String {
        format!("{}:{{p:{profile}}}:org", self.prefix)
    }

    /// A claimed one-time alert (see `Store::claim_alert`): `<prefix>:alert:<key>`.
    pub fn alert(&self, key: &str) -> String {
        format!("{}:alert:{key}", self.prefix)
    }

    /// The sorted set of every tenant of a scope (score: last seen): `<prefix>:tenants:<p|o>`.
    pub fn registry(&self, scope: Scope) -> String {
        format!("{}:tenants:{}", self.prefix, scope.tag())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slots_are_redis_clusters() {
        assert_eq!(super::crc16(b"123456789"), 0x31c3);
        // The tag alone decides, as in `{p:a}`.
        assert_eq!(Tag::own(Scope::Profile, "a").slot(), super::crc16(b"p:a") % 16_384);
    }

    use super::*;

    fn ck(scope: Scope, tenant: &str, window: Window, bucket: &str) -> CounterKey {
        CounterKey {
            scope,
            tenant: tenant.into(),
            window,
            bucket: bucket.into(),
            field: "cost".into(),
        }
    }

    /// The part of a key Redis Cluster hashes: the first `{...}` with something inside.
    fn hashed(key: &str) -> &str {
        let open = key.find('{').expect("every request key has a tag");
        let close = key[open + 1..].find('}').expect("closed tag") + open + 1;
        &key[open + 1..close]
    }

    #[test]
    fn every_key_of_a_request_shares_the_org_tag() {
        let k = Keys::new("sg");
        let keys = [
            ck(Scope::Profile, "p1", Window::Daily, "2026-11-22"),
            ck(Scope::Profile, "p1", Window::Monthly, "2026-11"),
            ck(Scope::Org, "acme", Window::Daily, "2026-11-22"),
        ];
        let tag = Tag::of_counters(keys.iter()).unwrap();
        assert_eq!(tag.as_str(), "o:acme");
        assert_eq!(k.counter(&tag, &keys[0]), "sg:{o:acme}:c:p:p1:d:2026-11-22");
        assert_eq!(k.counter(&tag, &keys[1]), "sg:{o:acme}:c:p:p1:m:2026-11");
        let all = [
            k.counter(&tag, &keys[0]),
            k.counter(&tag, &keys[2]),
            k.history(&tag, Scope::Profile, "p1", "2026-11-22"),
            k.history(&tag, Scope::Org, "acme", "2026-11"),
            k.recent(&tag, Scope::Profile, "p1"),
            k.applied(&tag, "2026-11-22"),
            k.calls(&tag, "2026112214"),
        ];
        assert!(all.iter().all(|key| hashed(key) == "o:acme"), "{all:?}");
        assert_eq!(all[3], "sg:{o:acme}:h:o:acme:m:2026-11");
    }

    #[test]
    fn a_profile_without_org_uses_its_own_tag() {
        let keys = [ck(Scope::Profile, "p1", Window::Daily, "2026-11-22")];
        let tag = Tag::of_counters(keys.iter()).unwrap();
        assert_eq!(tag, Tag::own(Scope::Profile, "p1"));
        assert_eq!(Tag::for_request("p1", None), tag);
        assert_eq!(Keys::new("sg").homes("p1"), "sg:{p:p1}:homes");
        assert_eq!(hashed(&Keys::new("sg").homes("p1")), tag.as_str());
    }

    #[test]
    fn parses_only_well_formed_tags() {
        assert_eq!(Tag::parse("o:acme"), Some(Tag::own(Scope::Org, "acme")));
        assert_eq!(Tag::parse("x:acme"), None);
        assert_eq!(Tag::parse("o:a}b"), None);
        assert_eq!(Tag::parse("nocolon"), None);
    }
}
