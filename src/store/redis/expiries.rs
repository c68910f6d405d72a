//! The expiries this process has set, so that a key whose expiry does not change (an id
//! hash's, a recent list's for the day) gets its `EXPIREAT` once per process instead of
//! once per request.
//!
//! What is remembered is only a shortcut: it is forgotten whenever a call to Redis fails
//! (Redis may have come back empty, or the call may have stopped before the expiry was
//! set), when it grows past its bound, and with the process. A key whose expiry is
//! forgotten gets it again with its next write.

use std::collections::HashMap;

use foldhash::fast::RandomState;

/// Most keys remembered; past it the memory starts over.
const MAX_KEYS: usize = 200_000;

#[derive(Default)]
pub struct Expiries {
    set: HashMap<String, i64, RandomState>,
}

impl Expiries {
    /// Whether `key` still needs its expiry set to `at`: true the first time, and whenever
    /// `at` differs from what was set last. The caller then sends it.
    pub fn needs(&mut self, key: &str, at: i64) -> bool {
        match self.set.get_mut(key) {
            Some(set) if *set == at => false,
            Some(set) => {
                *set = at;
                true
            }
            None => {
                if self.set.len() >= MAX_KEYS {
                    self.set.clear();
                }
                self.set.insert(key.to_string(), at);
                true
            }
        }
    }

    /// Forgets `key`: its expiry is sent again with its next write.
    pub fn unset(&mut self, key: &str) {
        self.set.remove(key);
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
    fn an_expiry_is_sent_once_until_it_changes_or_is_forgotten() {
        let mut e = Expiries::default();
        assert!(e.needs("a", 10));
        assert!(!e.needs("a", 10));
        assert!(e.needs("b", 10));
        assert!(e.needs("a", 11), "a new expiry is sent");
        assert!(!e.needs("a", 11));
        e.forget();
        assert!(e.needs("a", 11));
    }
}
