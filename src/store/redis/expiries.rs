//! The expiries this process has set, so that a key whose expiry does not change (an id
//! hash's, a recent list's for the day) gets its `EXPIREAT` once per process instead of
//! once per request.
//!
//! An expiry counts as set only once a call that carried it succeeded with the key written;
//! until then every call sends it. What is remembered is only a shortcut: it is forgotten
//! whenever a call to Redis fails (Redis may have come back empty), when it grows past its
//! bound, and with the process. A key whose expiry is forgotten gets it again with its next
//! write.

use std::collections::HashMap;

use foldhash::fast::RandomState;

/// Most keys remembered; past it the memory starts over.
const MAX_KEYS: usize = 200_000;

#[derive(Default)]
pub struct Expiries {
    /// Key -> the expire-at sent, and whether a call that carried it is known to have set it.
    set: HashMap<String, (i64, bool), RandomState>,
}

impl Expiries {
    /// Whether `key`'s expiry must be sent with `at`: until a call that carried it confirms
    /// it was set ([`Expiries::confirm`]), every call sends it (concurrent calls may be the
    /// ones that make the key); after that, only when `at` changes.
    pub fn needs(&mut self, key: &str, at: i64) -> bool {
        match self.set.get_mut(key) {
            Some((set, true)) if *set == at => false,
            Some(entry) => {
                *entry = (at, false);
                true
            }
            None => {
                if self.set.len() >= MAX_KEYS {
                    self.set.clear();
                }
                self.set.insert(key.to_string(), (at, false));
                true
            }
        }
    }

    /// A call that carried `key`'s expiry `at` succeeded and the key exists: it has it.
    pub fn confirm(&mut self, key: &str, at: i64) {
        if let Some(entry) = self.set.get_mut(key) {
            if entry.0 == at {
                entry.1 = true;
            }
        }
    }

    /// Forgets everything: every key gets its expiry again with its next write.
    pub fn forget(&mut self) {
        self.set.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiry_is_sent_until_confirmed_then_once_until_it_changes_or_is_forgotten() {
        let mut e = Expiries::default();
        assert!(e.needs("a", 10));
        assert!(e.needs("a", 10), "not confirmed yet: a concurrent call sends it too");
        e.confirm("a", 10);
        assert!(!e.needs("a", 10));
        assert!(e.needs("b", 10));
        assert!(e.needs("a", 11), "a new expiry is sent");
        e.confirm("a", 10);
        assert!(e.needs("a", 11), "confirming an older expiry does not count");
        e.confirm("a", 11);
        assert!(!e.needs("a", 11));
        e.forget();
        assert!(e.needs("a", 11));
    }
}
