//! The outage journal: what this replica counted while Redis could not be reached, kept in
//! order until it has been applied to Redis.
//!
//! Every entry carries a unique id. Replaying an entry runs `settle.lua` (in a batch) with
//! that id, which adds it to a set of applied ids in the entry's own hash slot in the same atomic step as
//! the counters; a replay that is interrupted after Redis applied it (reply lost, process
//! killed) and retried finds the id and changes nothing. The journal is bounded
//! (`store.journal_max_entries`); with `store.journal` it is also an append-only file of
//! JSON lines (`{"add": entry}`, `{"done": id}`), read back at start, so a crash loses
//! nothing that was counted.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::window::Window;
use crate::quota::ledger::{CounterKey, Expiry, UsageRecord};
use crate::store::snapshot;

/// One unit of counting to apply to Redis: counter deltas, and for a settlement the record
/// for the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    /// The hash tag every key of the entry carries (see `keys::Tag`).
    pub tag: String,
    /// Unix seconds when the entry was made; names the set its id is recorded in.
    pub created: i64,
    pub counters: Vec<(CounterKey, i64)>,
    /// Unix seconds after which the daily and monthly counters may be deleted.
    pub expire_daily: i64,
    pub expire_monthly: i64,
    /// The same for minute and hour counters (absent in entries written before rate windows).
    #[serde(default)]
    pub expire_minute: i64,
    #[serde(default)]
    pub expire_hour: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<UsageRecord>,
}

impl Entry {
    /// An entry without a record; its expiries are `expires`'.
    pub fn counting(id: String, tag: String, created: i64, counters: Vec<(CounterKey, i64)>, expires: &Expiry) -> Entry {
        Entry {
            id,
            tag,
            created,
            counters,
            expire_daily: expires.daily.timestamp(),
            expire_monthly: expires.monthly.timestamp(),
            expire_minute: expires.minute.timestamp(),
            expire_hour: expires.hour.timestamp(),
            record: None,
        }
    }

    /// Unix seconds after which a counter of `window` may be deleted.
    pub fn expire_at(&self, window: Window) -> i64 {
        match window {
            Window::Minute => self.expire_minute,
            Window::Hour => self.expire_hour,
            Window::Daily => self.expire_daily,
            Window::Monthly => self.expire_monthly,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    Add(Box<Entry>),
    Done(String),
}

struct Slot {
    entry: Entry,
    /// The original Redis call has not answered yet; the entry is replayed only if it fails.
    in_flight: bool,
    failures: u32,
}

struct JournalFile {
    path: PathBuf,
    file: File,
    lines: usize,
    unsynced: bool,
}

/// The journal is at its bound.
#[derive(Debug)]
pub struct Full;

pub struct Journal {
    slots: BTreeMap<u64, Slot>,
    index: HashMap<String, u64>,
    next: u64,
    max: usize,
    file: Option<JournalFile>,
}

impl Journal {
    /// An in-memory journal, or the one in `path` (read now, compacted, then appended to).
    pub fn open(path: Option<&Path>, max: usize) -> std::io::Result<Journal> {
        let mut j = Journal {
            slots: BTreeMap::new(),
            index: HashMap::new(),
            next: 0,
            max: max.max(1),
            file: None,
        };
        let Some(path) = path else { return Ok(j) };
        if let Some(bytes) = snapshot::read_if_exists(path)? {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            for (i, line) in lines.iter().enumerate() {
                match serde_json::from_str::<Line>(line) {
                    Ok(Line::Add(e)) => j.insert(*e, false),
                    Ok(Line::Done(id)) => {
                        j.remove(&id);
                    }
                    // A torn last line is what a crash in the middle of an append leaves.
                    Err(e) if i + 1 == lines.len() => tracing::warn!(path = %path.display(), error = %e, "ignoring a torn last line of the journal"),
                    Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("line {}: {e}", i + 1))),
                }
            }
        }
        j.file = Some(JournalFile::create(path, j.slots.values().map(|s| &s.entry))?);
        Ok(j)
    }

    fn insert(&mut self, entry: Entry, in_flight: bool) {
        if self.index.contains_key(&entry.id) {
            return;
        }
        self.index.insert(entry.id.clone(), self.next);
        self.slots.insert(self.next, Slot { entry, in_flight, failures: 0 });
        self.next += 1;
    }

    fn remove(&mut self, id: &str) -> Option<Entry> {
        let seq = self.index.remove(id)?;
        self.slots.remove(&seq).map(|s| s.entry)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.max
    }

    /// Whether a reservation may still be journaled. Reservations stop at three quarters of
    /// the bound: the last quarter is kept for the settlements of requests already forwarded,
    /// so that what was admitted can still be counted.
    pub fn has_room_for_reservation(&self) -> bool {
        self.slots.len() < self.max - self.max.div_ceil(4)
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.slots.values().map(|s| &s.entry)
    }

    /// Adds an entry. Written to the file before it counts; a file error is returned after
    /// the entry was kept in memory (it will still be replayed unless the process dies).
    pub fn push(&mut self, entry: Entry, in_flight: bool) -> Result<std::io::Result<()>, Full> {
        if self.is_full() {
            return Err(Full);
        }
        let written = match &mut self.file {
            Some(f) => f.append(&Line::Add(Box::new(entry.clone()))),
            None => Ok(()),
        };
        self.insert(entry, in_flight);
        Ok(written)
    }

    /// Whether some entry waits for the answer of its original call.
    pub fn has_in_flight(&self) -> bool {
        self.slots.values().any(|s| s.in_flight)
    }

    /// The original call of an in-flight entry failed: replay it.
    pub fn release(&mut self, id: &str) {
        if let Some(slot) = self.index.get(id).and_then(|seq| self.slots.get_mut(seq)) {
            slot.in_flight = false;
        }
    }

    /// Removes an entry that Redis has applied. `None` when it was not (or no longer) here.
    pub fn complete(&mut self, id: &str) -> Option<(Entry, std::io::Result<()>)> {
        let entry = self.remove(id)?;
        let written = match &mut self.file {
            Some(f) if self.slots.is_empty() => f.truncate(),
            Some(f) if f.lines > 2 * self.slots.len() + 1024 => f.rewrite(self.slots.values().map(|s| &s.entry)),
            Some(f) => f.append(&Line::Done(entry.id.clone())),
            None => Ok(()),
        };
        Some((entry, written))
    }

    /// Up to `n` entries to replay, oldest first (in-flight ones are skipped).
    pub fn replayable(&self, n: usize) -> Vec<Entry> {
        self.slots.values().filter(|s| !s.in_flight).take(n).map(|s| s.entry.clone()).collect()
    }

    /// Counts a failed replay of `id` that was not a connection problem; returns the count.
    pub fn failed(&mut self, id: &str) -> u32 {
        match self.index.get(id).and_then(|seq| self.slots.get_mut(seq)) {
            Some(slot) => {
                slot.failures += 1;
                slot.failures
            }
            None => 0,
        }
    }

    /// Forces what was written to disk.
    pub fn sync(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) if f.unsynced => {
                f.file.sync_data()?;
                f.unsynced = false;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl JournalFile {
    /// Writes the compacted journal atomically, then opens it for appending.
    fn create<'a>(path: &Path, entries: impl Iterator<Item = &'a Entry>) -> std::io::Result<JournalFile> {
        let mut bytes = Vec::new();
        let mut lines = 0;
        for e in entries {
            serde_json::to_writer(&mut bytes, &Line::Add(Box::new(e.clone())))?;
            bytes.push(b'\n');
            lines += 1;
        }
        snapshot::write_atomic(path, &bytes)?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(JournalFile {
            path: path.to_path_buf(),
            file,
            lines,
            unsynced: false,
        })
    }

    fn append(&mut self, line: &Line) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(line)?;
        bytes.push(b'\n');
        // One write per line: a crash leaves at most one torn line, at the end.
        self.file.write_all(&bytes)?;
        self.lines += 1;
        self.unsynced = true;
        Ok(())
    }

    fn truncate(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.lines = 0;
        self.unsynced = true;
        Ok(())
    }

    fn rewrite<'a>(&mut self, entries: impl Iterator<Item = &'a Entry>) -> std::io::Result<()> {
        *self = JournalFile::create(&self.path.clone(), entries)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Scope;

    fn entry(id: &str) -> Entry {
        Entry {
            id: id.into(),
            tag: "p:p1".into(),
            created: 1_800_000_000,
            counters: vec![(
                CounterKey {
                    scope: Scope::Profile,
                    tenant: "p1".into(),
                    window: Window::Daily,
                    bucket: "2027-01-15".into(),
                    field: "cost".into(),
                },
                7,
            )],
            expire_daily: 1_900_000_000,
            expire_monthly: 1_900_000_000,
            expire_minute: 1_900_000_000,
            expire_hour: 1_900_000_000,
            record: None,
        }
    }

    #[test]
    fn bounded_and_ordered() {
        let mut j = Journal::open(None, 2).unwrap();
        assert!(j.has_room_for_reservation());
        j.push(entry("a"), false).unwrap().unwrap();
        assert!(!j.has_room_for_reservation(), "the last quarter is kept for settlements");
        j.push(entry("b"), true).unwrap().unwrap();
        assert!(j.push(entry("c"), false).is_err());
        assert_eq!(
            j.replayable(10).iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["a"],
            "in-flight entries wait"
        );
        j.release("b");
        assert_eq!(j.replayable(10).len(), 2);
        assert!(j.complete("a").is_some());
        assert!(j.complete("a").is_none(), "completed once");
        assert_eq!(j.failed("b"), 1);
        assert_eq!(j.len(), 1);
    }

    #[test]
    fn file_survives_a_restart_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.ndjson");
        {
            let mut j = Journal::open(Some(&path), 10).unwrap();
            for id in ["a", "b", "c"] {
                j.push(entry(id), false).unwrap().unwrap();
            }
            j.complete("b").unwrap().1.unwrap();
            j.sync().unwrap();
        }
        // A crash in the middle of an append.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"add\":{\"id\":\"d\",\"ta").unwrap();
        drop(f);
        let mut j = Journal::open(Some(&path), 10).unwrap();
        assert_eq!(j.entries().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(j.entries().next().unwrap(), &entry("a"));
        // Emptying the journal truncates the file.
        j.complete("a").unwrap().1.unwrap();
        j.complete("c").unwrap().1.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        j.push(entry("e"), false).unwrap().unwrap();
        drop(j);
        let j = Journal::open(Some(&path), 10).unwrap();
        assert_eq!(j.entries().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["e"]);
    }

    #[test]
    fn a_corrupt_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.ndjson");
        std::fs::write(&path, "garbage\n{\"done\":\"x\"}\n").unwrap();
        assert!(Journal::open(Some(&path), 10).is_err());
    }
}
