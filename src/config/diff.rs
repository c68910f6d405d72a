//! Differences between two configurations that matter to a running process.

use super::Config;

/// Keys whose new values a running proxy cannot apply (its sockets and store are open): the
/// ones that differ between `old` and `new`.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let listens = |c: &Config| c.providers.iter().map(|(n, p)| (n.clone(), p.listen)).collect::<Vec<_>>();
    let checks: [(&'static str, bool); 11] = [
        ("listen", old.listen != new.listen),
        ("admin.listen", old.admin.listen != new.admin.listen),
        ("store.backend", old.store.backend != new.store.backend),
        ("store.url", old.store.url != new.store.url),
        ("store.cluster", old.store.cluster != new.store.cluster),
        ("store.key_prefix", old.store.key_prefix != new.store.key_prefix),
        ("store.path", old.store.path != new.store.path),
        ("store.durability", old.store.durability != new.store.durability),
        ("store.commit_interval", old.store.commit_interval != new.store.commit_interval),
        ("store.snapshot", old.store.snapshot != new.store.snapshot),
        ("providers.*.listen", listens(old) != listens(new)),
    ];
    for (key, changed) in checks {
        if changed {
            out.push(key);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_are_named() {
        let a = Config::from_yaml("limits:\n  default_profile:\n    - {metric: requests, window: daily, max: 1}\n", "a").unwrap();
        let b = Config::from_yaml("limits:\n  default_profile:\n    - {metric: requests, window: daily, max: 2}\n", "b").unwrap();
        assert!(restart_only_changes(&a, &b).is_empty());
        let c = Config::from_yaml("listen: \"127.0.0.1:8181\"\nstore:\n  key_prefix: other\n", "c").unwrap();
        assert_eq!(restart_only_changes(&a, &c), ["listen", "store.key_prefix"]);
    }
}
