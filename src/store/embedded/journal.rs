//! What the writer commits every commit interval, and how it reaches the tables.
//!
//! A batch of records is folded into [`Changes`]: counter deltas and history totals summed
//! per row, calls opened and closed (a call opened and closed within the same changes never
//! appears), bindings, claims and pruned buckets. Each commit appends the batch's changes to
//! the `journal` table as one compact row, so a commit writes a few sequential pages however
//! many tenants it touches. The changes of successive commits are merged in memory and
//! written to the tables (counters, open calls, history, ...) about once a second, or when a
//! report reads them, in one transaction that also empties the journal. At start, whatever a
//! crash left in the journal is applied the same way before anything else reads the tables.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, Transaction};

use super::rows::{self, Map, TagUse, TotalsTable};
use crate::domain::window::Window;
use crate::domain::Scope;
use crate::quota::ledger::{CounterKey, OpenCall, Totals, UsageRecord};

/// Totals a record adds to, per scope: its day by provider and by model, and its month.
const TABLES: [TotalsTable; 3] = [TotalsTable::DailyProvider, TotalsTable::DailyModel, TotalsTable::Monthly];

/// The code of a tenant's packed key (see [`pack`]), beside the tables' codes.
const TENANT_ROW: u8 = 0xff;

/// The net effect of some records on the tables.
#[derive(Debug, Default)]
pub struct Changes {
    counters: Map<CounterKey, i64>,
    /// Window buckets deleted, in order; deltas folded in before a prune are dropped with it.
    prunes: Vec<(Window, String)>,
    /// Calls opened and not closed within these changes.
    opened: Map<String, Arc<OpenCall>>,
    /// Calls opened before these changes and closed in them.
    closed: Vec<String>,
    /// History totals per row: see [`pack`].
    totals: Map<Box<[u8]>, Totals>,
    /// The newest day each tenant (packed scope and id) was seen.
    tenants: Map<Box<[u8]>, String>,
    tagged: Vec<TagUse>,
    binds: Vec<(String, Option<String>)>,
    claims: Vec<(String, i64)>,
    /// How many records were folded in (what bounds how long they wait for the tables).
    records: usize,
    /// Scratch space for packing row keys.
    scratch: Vec<u8>,
}

/// Packs a history row's table, scope and key columns into one byte string (length-prefixed,
/// so any text is safe): looked up without allocating, allocated once per new row.
fn pack(out: &mut Vec<u8>, table: u8, scope: Scope, columns: &[&str]) {
    out.clear();
    out.push(table);
    out.push(scope_code(scope));
    for c in columns {
        out.extend_from_slice(&u32::try_from(c.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(c.as_bytes());
    }
}

/// The table, scope and key columns of a packed key.
fn unpack(key: &[u8]) -> Option<(u8, Scope, Vec<&str>)> {
    let (&table, rest) = key.split_first()?;
    let (&scope, mut rest) = rest.split_first()?;
    let mut columns = Vec::with_capacity(4);
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        let (text, tail) = (tail.get(..len)?, tail.get(len..)?);
        columns.push(std::str::from_utf8(text).ok()?);
        rest = tail;
    }
    Some((table, scope_of(scope)?, columns))
}

fn scope_code(s: Scope) -> u8 {
    match s {
        Scope::Profile => 0,
        Scope::Org => 1,
    }
}

fn scope_of(code: u8) -> Option<Scope> {
    match code {
        0 => Some(Scope::Profile),
        1 => Some(Scope::Org),
        _ => None,
    }
}

fn table_code(t: TotalsTable) -> u8 {
    match t {
        TotalsTable::DailyProvider => 0,
        TotalsTable::DailyModel => 1,
        TotalsTable::Monthly => 2,
        TotalsTable::DailyTag => 3,
    }
}

fn table_of(code: u8) -> Option<TotalsTable> {
    TABLES.into_iter().find(|t| table_code(*t) == code)
}

fn window_code(w: Window) -> u8 {
    match w {
        Window::Minute => 0,
        Window::Hour => 1,
        Window::Daily => 2,
        Window::Monthly => 3,
    }
}

fn window_of(code: u8) -> Option<Window> {
    Window::ALL.into_iter().find(|w| window_code(*w) == code)
}

impl Changes {
    /// Empties these changes and keeps their maps' room: the changes waiting for the tables
    /// refill to about the same size every second, and would otherwise grow (and rehash) again
    /// from nothing each time. The room kept is that of the largest second, which the
    /// writer's `MATERIALIZE_MAX` records bound.
    pub fn clear(&mut self) {
        let Changes {
            counters,
            prunes,
            opened,
            closed,
            totals,
            tenants,
            tagged,
            binds,
            claims,
            records,
            scratch: _,
        } = self;
        counters.clear();
        prunes.clear();
        opened.clear();
        closed.clear();
        totals.clear();
        tenants.clear();
        tagged.clear();
        binds.clear();
        claims.clear();
        *records = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Records folded in since these changes were empty.
    pub fn records(&self) -> usize {
        self.records
    }

    /// The profiles bound in these changes.
    pub fn bound(&self) -> impl Iterator<Item = &str> {
        self.binds.iter().map(|(p, _)| p.as_str())
    }

    pub fn add_counter(&mut self, key: &CounterKey, delta: i64) {
        if delta == 0 {
            return;
        }
        match self.counters.get_mut(key) {
            Some(v) => *v += delta,
            None => {
                self.counters.insert(key.clone(), delta);
            }
        }
    }

    pub fn open(&mut self, call: Arc<OpenCall>) {
        self.opened.insert(call.id.clone(), call);
    }

    pub fn close(&mut self, id: &str) {
        if self.opened.remove(id).is_none() {
            self.closed.push(id.to_string());
        }
    }

    pub fn prune(&mut self, window: Window, bucket: &str) {
        self.counters.retain(|k, _| !(k.window == window && &*k.bucket == bucket));
        self.prunes.push((window, bucket.to_string()));
    }

    pub fn bind(&mut self, profile: &str, org: Option<&str>) {
        self.binds.push((profile.to_string(), org.map(str::to_string)));
    }

    pub fn claim(&mut self, key: &str, expires: i64) {
        self.claims.push((key.to_string(), expires));
    }

    /// Counts one record as folded in.
    pub fn count(&mut self) {
        self.records += 1;
    }

    /// Adds a settled call to the history: its day by provider and by model, its month, its
    /// tenants' last day, its tags.
    pub fn add_history(&mut self, rec: &UsageRecord) {
        let month = rec.day.get(..7).unwrap_or(&rec.day);
        let scopes = std::iter::once((Scope::Profile, rec.profile.as_str())).chain(rec.org.as_deref().map(|o| (Scope::Org, o)));
        let mut scratch = std::mem::take(&mut self.scratch);
        for (scope, tenant) in scopes {
            for (table, columns) in [
                (TotalsTable::DailyProvider, [tenant, &*rec.day, &*rec.provider].as_slice()),
                (TotalsTable::DailyModel, &[tenant, &*rec.day, rec.model.as_str()]),
                (TotalsTable::Monthly, &[tenant, month]),
            ] {
                pack(&mut scratch, table_code(table), scope, columns);
                self.add_totals_packed(&scratch, &rec.totals);
            }
            pack(&mut scratch, TENANT_ROW, scope, &[tenant]);
            self.see_tenant(&scratch, &rec.day);
        }
        self.scratch = scratch;
        if !rec.tags.is_empty() {
            self.tagged.push(TagUse {
                profile: rec.profile.clone(),
                org: rec.org.clone(),
                day: rec.day.to_string(),
                tags: rec.tags.clone(),
                totals: rec.totals.clone(),
            });
        }
    }

    fn add_totals_packed(&mut self, key: &[u8], t: &Totals) {
        match self.totals.get_mut(key) {
            Some(sum) => sum.add(t),
            None => {
                self.totals.insert(key.into(), t.clone());
            }
        }
    }

    fn see_tenant(&mut self, key: &[u8], day: &str) {
        match self.tenants.get_mut(key) {
            Some(last) if last.as_str() < day => *last = day.to_string(),
            Some(_) => {}
            None => {
                self.tenants.insert(key.into(), day.to_string());
            }
        }
    }

    /// Folds in `later`, changes made after these.
    pub fn merge(&mut self, later: Changes) {
        for (window, bucket) in later.prunes {
            self.prune(window, &bucket);
        }
        for (k, d) in later.counters {
            *self.counters.entry(k).or_insert(0) += d;
        }
        self.opened.extend(later.opened);
        for id in later.closed {
            self.close(&id);
        }
        for (k, t) in later.totals {
            self.add_totals_packed(&k, &t);
        }
        for (k, day) in later.tenants {
            self.see_tenant(&k, &day);
        }
        self.tagged.extend(later.tagged);
        self.binds.extend(later.binds);
        self.claims.extend(later.claims);
        self.records += later.records;
    }

    /// Writes these changes to the tables (within the caller's transaction).
    pub fn apply(&self, tx: &Transaction<'_>, keep: rows::Keep) -> rusqlite::Result<()> {
        for (w, b) in &self.prunes {
            rows::prune_counters(tx, w.as_str(), b)?;
        }
        // In (about) the tables' key order: each page is visited once, however many rows
        // change. The key's own order sorts by tenant like the tables do; only the scope and
        // window enums compare differently from their names, which keeps the runs together
        // (and a bucket's fields next to each other, as `add_counters` needs).
        let mut counters: Vec<(&CounterKey, i64)> = self.counters.iter().filter(|(_, d)| **d != 0).map(|(k, d)| (k, *d)).collect();
        counters.sort_unstable_by_key(|(k, _)| *k);
        rows::add_counters(tx, &counters)?;
        let mut st = tx.prepare_cached("INSERT OR REPLACE INTO open_calls VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)")?;
        for (id, c) in &self.opened {
            let r = &c.record;
            let t = &r.totals;
            st.execute(params![
                id,
                r.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                r.day,
                r.profile,
                r.org,
                r.provider,
                r.model,
                r.path,
                t.requests,
                t.cost_nanos,
                t.input_tokens,
                t.output_tokens,
                t.cached_tokens,
                t.characters,
                rows::tags_column(&r.tags)
            ])?;
        }
        let mut st = tx.prepare_cached("DELETE FROM open_calls WHERE id = ?1")?;
        for id in &self.closed {
            st.execute([id])?;
        }
        let mut st = tx.prepare_cached("INSERT INTO org_bindings VALUES (?1, ?2) ON CONFLICT (profile) DO NOTHING")?;
        for (p, o) in &self.binds {
            st.execute(params![p, o])?;
        }
        let mut st = tx.prepare_cached("INSERT OR REPLACE INTO alert_claims VALUES (?1, ?2)")?;
        for (key, expires) in &self.claims {
            st.execute(params![key, expires])?;
        }
        let corrupt = || rusqlite::Error::ToSqlConversionFailure("a history key that does not unpack".into());
        let mut totals: Vec<(u8, Vec<&str>, &Totals)> = Vec::with_capacity(self.totals.len());
        for (key, t) in &self.totals {
            let (table, scope, columns) = unpack(key).ok_or_else(corrupt)?;
            let mut cols: Vec<&str> = Vec::with_capacity(columns.len() + 1);
            cols.push(rows::scope_name(scope));
            cols.extend(columns);
            totals.push((table, cols, t));
        }
        totals.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (table, cols, t) in totals {
            rows::add_totals(tx, table_of(table).ok_or_else(corrupt)?, &cols, t)?;
        }
        let mut st = tx.prepare_cached(
            "INSERT INTO tenants VALUES (?1, ?2, ?3, ?3) ON CONFLICT (scope, tenant) DO UPDATE SET last_day = excluded.last_day \
             WHERE excluded.last_day > last_day",
        )?;
        let mut tenants: Vec<(&str, &str, &str)> = Vec::with_capacity(self.tenants.len());
        for (key, day) in &self.tenants {
            let (_, scope, columns) = unpack(key).ok_or_else(corrupt)?;
            tenants.push((rows::scope_name(scope), columns.first().ok_or_else(corrupt)?, day));
        }
        tenants.sort_unstable();
        for (scope, tenant, day) in tenants {
            st.execute(params![scope, tenant, day])?;
        }
        rows::write_tags(tx, &self.tagged, keep)
    }

    /// The journal row of these changes.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::default();
        e.buf.push(FORMAT);
        e.len(self.prunes.len());
        for (w, b) in &self.prunes {
            e.buf.push(window_code(*w));
            e.str(b);
        }
        e.len(self.counters.len());
        for (k, d) in &self.counters {
            e.buf.push(scope_code(k.scope));
            e.str(&k.tenant);
            e.buf.push(window_code(k.window));
            e.str(&k.bucket);
            e.str(&k.field);
            e.int(*d);
        }
        e.len(self.opened.len());
        for c in self.opened.values() {
            e.str(&c.id);
            e.record(&c.record);
        }
        e.len(self.closed.len());
        for id in &self.closed {
            e.str(id);
        }
        e.len(self.totals.len());
        for (k, t) in &self.totals {
            e.packed(k);
            e.totals(t);
        }
        e.len(self.tenants.len());
        for (k, day) in &self.tenants {
            e.packed(k);
            e.str(day);
        }
        e.len(self.tagged.len());
        for t in &self.tagged {
            e.str(&t.profile);
            e.opt(t.org.as_deref());
            e.str(&t.day);
            e.strs(&t.tags);
            e.totals(&t.totals);
        }
        e.len(self.binds.len());
        for (p, o) in &self.binds {
            e.str(p);
            e.opt(o.as_deref());
        }
        e.len(self.claims.len());
        for (k, x) in &self.claims {
            e.str(k);
            e.int(*x);
        }
        e.len(self.records);
        e.buf
    }

    /// Changes from a journal row.
    pub fn decode(row: &[u8]) -> Result<Changes, String> {
        let mut d = Decoder { buf: row, strings: Vec::new() };
        let format = d.byte()?;
        if format != FORMAT {
            return Err(format!("journal format {format} is not known to this build (it writes {FORMAT})"));
        }
        let mut c = Changes::default();
        for _ in 0..d.len()? {
            let window = window_of(d.byte()?).ok_or("a window code out of range")?;
            let bucket = d.str()?;
            c.prunes.push((window, bucket.to_string()));
        }
        for _ in 0..d.len()? {
            let scope = scope_of(d.byte()?).ok_or("a scope code out of range")?;
            let tenant = d.str()?;
            let window = window_of(d.byte()?).ok_or("a window code out of range")?;
            let bucket = d.str()?;
            let field = d.str()?;
            let key = CounterKey {
                scope,
                tenant,
                window,
                bucket,
                field,
            };
            *c.counters.entry(key).or_insert(0) += d.int()?;
        }
        for _ in 0..d.len()? {
            let id = d.str()?.to_string();
            let record = d.record()?;
            c.opened.insert(id.clone(), Arc::new(OpenCall { id, record }));
        }
        for _ in 0..d.len()? {
            c.closed.push(d.str()?.to_string());
        }
        for _ in 0..d.len()? {
            let key = d.packed()?;
            table_of(key[0]).ok_or("a history table code out of range")?;
            let t = d.totals()?;
            c.totals.insert(key.into(), t);
        }
        for _ in 0..d.len()? {
            let key = d.packed()?;
            let day = d.str()?.to_string();
            c.tenants.insert(key.into(), day);
        }
        for _ in 0..d.len()? {
            c.tagged.push(TagUse {
                profile: d.str()?.to_string(),
                org: d.opt()?.map(|s| s.to_string()),
                day: d.str()?.to_string(),
                tags: d.strs()?,
                totals: d.totals()?,
            });
        }
        for _ in 0..d.len()? {
            let p = d.str()?.to_string();
            c.binds.push((p, d.opt()?.map(|s| s.to_string())));
        }
        for _ in 0..d.len()? {
            let k = d.str()?.to_string();
            c.claims.push((k, d.int()?));
        }
        c.records = usize::try_from(d.uint()?).map_err(|_| "a record count out of range")?;
        if !d.buf.is_empty() {
            return Err(format!("{} bytes past the end of the changes", d.buf.len()));
        }
        Ok(c)
    }
}

/// The journal row layout's version (its first byte).
const FORMAT: u8 = 1;

/// Writes a journal row: LEB128 integers (zig-zag for signed ones), and each distinct string
/// once (later uses refer to its first by number).
#[derive(Default)]
struct Encoder<'a> {
    buf: Vec<u8>,
    strings: Map<&'a str, u64>,
}

impl<'a> Encoder<'a> {
    fn uint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(b);
                return;
            }
            self.buf.push(b | 0x80);
        }
    }

    fn int(&mut self, v: i64) {
        self.uint(((v << 1) ^ (v >> 63)) as u64);
    }

    fn len(&mut self, n: usize) {
        self.uint(n as u64);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.buf.extend_from_slice(b);
    }

    /// 0 and the text for a string not seen before; n + 1 for the n-th string seen.
    fn str(&mut self, s: &'a str) {
        if let Some(n) = self.strings.get(s) {
            let n = *n;
            self.uint(n + 1);
            return;
        }
        let n = self.strings.len() as u64;
        self.strings.insert(s, n);
        self.uint(0);
        self.bytes(s.as_bytes());
    }

    /// A packed row key, its columns written as strings.
    fn packed(&mut self, key: &'a [u8]) {
        match unpack(key) {
            Some((table, scope, columns)) => {
                self.buf.push(table);
                self.buf.push(scope_code(scope));
                self.len(columns.len());
                for c in columns {
                    self.str(c);
                }
            }
            // Packed by this module: unreachable, and refused when read back.
            None => self.buf.extend_from_slice(&[0xfe, 0xfe]),
        }
    }

    fn opt(&mut self, s: Option<&'a str>) {
        match s {
            Some(s) => {
                self.buf.push(1);
                self.str(s);
            }
            None => self.buf.push(0),
        }
    }

    fn strs(&mut self, v: &'a [String]) {
        self.len(v.len());
        for s in v {
            self.str(s);
        }
    }

    fn totals(&mut self, t: &Totals) {
        for v in [t.requests, t.cost_nanos, t.input_tokens, t.output_tokens, t.cached_tokens, t.characters] {
            self.int(v);
        }
    }

    fn record(&mut self, r: &'a UsageRecord) {
        self.int(r.at.timestamp_micros());
        self.str(&r.day);
        self.str(&r.profile);
        self.opt(r.org.as_deref());
        self.str(&r.provider);
        self.str(&r.model);
        self.str(&r.path);
        self.uint(u64::from(r.status));
        self.strs(&r.tags);
        self.totals(&r.totals);
        self.opt(r.reason.as_deref());
    }
}

struct Decoder<'a> {
    buf: &'a [u8],
    strings: Vec<Arc<str>>,
}

const SHORT: &str = "the row ends early";

impl<'a> Decoder<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let (&b, rest) = self.buf.split_first().ok_or(SHORT)?;
        self.buf = rest;
        Ok(b)
    }

    fn uint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("an integer longer than 64 bits".into())
    }

    fn int(&mut self) -> Result<i64, String> {
        let u = self.uint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A count of items still to come: never more than the bytes left (each item takes at
    /// least one), so a corrupt count cannot make the reader allocate without bound.
    fn len(&mut self) -> Result<usize, String> {
        let n = usize::try_from(self.uint()?).map_err(|_| "a count out of range")?;
        if n > self.buf.len() + 1 {
            return Err(format!("a count of {n} with {} bytes left", self.buf.len()));
        }
        Ok(n)
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.len()?;
        let (b, rest) = self.buf.split_at_checked(n).ok_or(SHORT)?;
        self.buf = rest;
        Ok(b)
    }

    fn str(&mut self) -> Result<Arc<str>, String> {
        match self.uint()? {
            0 => {
                let b = self.bytes()?;
                let s: Arc<str> = std::str::from_utf8(b).map_err(|_| "text that is not UTF-8")?.into();
                self.strings.push(s.clone());
                Ok(s)
            }
            n => usize::try_from(n - 1)
                .ok()
                .and_then(|i| self.strings.get(i))
                .cloned()
                .ok_or_else(|| format!("a reference to string {n} of {}", self.strings.len())),
        }
    }

    fn packed(&mut self) -> Result<Vec<u8>, String> {
        let table = self.byte()?;
        let scope = scope_of(self.byte()?).ok_or("a scope code out of range")?;
        let columns: Vec<Arc<str>> = (0..self.len()?).map(|_| self.str()).collect::<Result<_, _>>()?;
        let columns: Vec<&str> = columns.iter().map(|c| &**c).collect();
        let mut key = Vec::new();
        pack(&mut key, table, scope, &columns);
        Ok(key)
    }

    fn opt(&mut self) -> Result<Option<Arc<str>>, String> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            b => Err(format!("an option tag {b}")),
        }
    }

    fn strs(&mut self) -> Result<Vec<String>, String> {
        (0..self.len()?).map(|_| self.str().map(|s| s.to_string())).collect()
    }

    fn totals(&mut self) -> Result<Totals, String> {
        Ok(Totals {
            requests: self.int()?,
            cost_nanos: self.int()?,
            input_tokens: self.int()?,
            output_tokens: self.int()?,
            cached_tokens: self.int()?,
            characters: self.int()?,
        })
    }

    fn record(&mut self) -> Result<UsageRecord, String> {
        let at = DateTime::<Utc>::from_timestamp_micros(self.int()?).ok_or("a time out of range")?;
        Ok(UsageRecord {
            at,
            day: self.str()?,
            profile: self.str()?.to_string(),
            org: self.opt()?.map(|s| s.to_string()),
            provider: self.str()?,
            model: self.str()?.to_string(),
            path: self.str()?.to_string(),
            status: u16::try_from(self.uint()?).map_err(|_| "a status out of range")?,
            tags: self.strs()?,
            totals: self.totals()?,
            reason: self.opt()?.map(|s| s.to_string()),
        })
    }
}

/// Appends `changes` to the journal (within the caller's transaction).
pub fn append(tx: &Transaction<'_>, changes: &Changes) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT INTO journal (changes) VALUES (?1)")?.execute([changes.encode()])?;
    Ok(())
}

/// Writes `changes` (everything the journal holds) to the tables and empties the journal,
/// in one transaction.
pub fn materialize(conn: &mut Connection, changes: &Changes, keep: rows::Keep) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    changes.apply(&tx, keep)?;
    tx.execute("DELETE FROM journal", [])?;
    tx.commit()
}

/// Applies what a crash left in the journal: its rows in order, merged, then written to the
/// tables. Returns how many rows there were.
pub fn recover(conn: &mut Connection, keep: rows::Keep) -> Result<usize, String> {
    let rows: Vec<(i64, Vec<u8>)> = {
        let mut st = conn.prepare("SELECT seq, changes FROM journal ORDER BY seq").map_err(|e| e.to_string())?;
        let it = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| e.to_string())?;
        it.collect::<rusqlite::Result<_>>().map_err(|e| e.to_string())?
    };
    if rows.is_empty() {
        return Ok(0);
    }
    let mut all = Changes::default();
    for (seq, row) in &rows {
        let c = Changes::decode(row).map_err(|e| format!("journal row {seq} cannot be read: {e}"))?;
        all.merge(c);
    }
    materialize(conn, &all, keep).map_err(|e| e.to_string())?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::counters::tests::key;
    use proptest::prelude::*;

    fn record(profile: &str, org: Option<&str>, tags: &[&str], cost: i64) -> UsageRecord {
        UsageRecord {
            at: DateTime::from_timestamp_micros(1_796_000_000_123_456).unwrap(),
            day: "2026-11-29".into(),
            profile: profile.into(),
            org: org.map(Into::into),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            path: "/v1/chat/completions".into(),
            status: 200,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            totals: Totals {
                requests: 1,
                cost_nanos: cost,
                input_tokens: 10,
                output_tokens: -3,
                ..Totals::default()
            },
            reason: Some("cut".into()),
        }
    }

    fn sample() -> Changes {
        let mut c = Changes::default();
        c.add_counter(&key("p", Window::Daily, "2026-11-29", "cost"), 5);
        c.add_counter(&key("p", Window::Minute, "2026-11-29T10:05+00:00", "requests#a"), -2);
        c.add_counter(&key("q\u{0}odd", Window::Monthly, "2026-11", "cost"), i64::MIN + 1);
        c.prune(Window::Hour, "2026-11-29T09+00:00");
        c.open(Arc::new(OpenCall {
            id: "call-1".into(),
            record: record("p", Some("acme"), &["tool=x"], 7),
        }));
        c.close("call-0");
        c.add_history(&record("p", Some("acme"), &["tool=x", "team=y"], 9));
        c.add_history(&record("q", None, &[], i64::MAX));
        c.bind("p", Some("acme"));
        c.bind("q", None);
        c.claim("alert:p:cost:80", 1_800_000_000);
        for _ in 0..5 {
            c.count();
        }
        c
    }

    /// Everything a `Changes` holds, in a comparable form.
    fn view(c: &Changes) -> String {
        let mut counters: Vec<_> = c.counters.iter().collect();
        counters.sort();
        let mut opened: Vec<_> = c.opened.iter().map(|(id, c)| (id.clone(), format!("{:?}", c.record))).collect();
        opened.sort();
        let mut totals: Vec<_> = c.totals.iter().map(|(k, t)| (unpack(k), t.clone())).collect();
        totals.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        let mut tenants: Vec<_> = c.tenants.iter().map(|(k, d)| (unpack(k), d.clone())).collect();
        tenants.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        format!(
            "{counters:?}\n{:?}\n{opened:?}\n{:?}\n{totals:?}\n{tenants:?}\n{:?}\n{:?}\n{:?}\n{}",
            c.prunes, c.closed, c.tagged, c.binds, c.claims, c.records
        )
    }

    #[test]
    fn a_journal_row_reads_back_as_the_changes_it_was_written_from() {
        let c = sample();
        let row = c.encode();
        let back = Changes::decode(&row).unwrap();
        assert_eq!(view(&back), view(&c));
        assert_eq!(back.opened["call-1"].record.at, c.opened["call-1"].record.at);
        // Strings repeat across keys and records; each is written once.
        for s in [&b"openai"[..], b"acme", b"gpt-4o", b"tool=x"] {
            assert_eq!(row.windows(s.len()).filter(|w| *w == s).count(), 1, "{}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn a_call_opened_and_closed_across_merged_changes_never_reaches_the_tables() {
        let mut first = Changes::default();
        first.open(Arc::new(OpenCall {
            id: "a".into(),
            record: record("p", None, &[], 1),
        }));
        first.count();
        let mut later = Changes::default();
        later.close("a");
        later.close("older");
        later.count();
        first.merge(later);
        assert!(first.opened.is_empty());
        assert_eq!(first.closed, ["older"]);
        assert_eq!(first.records(), 2);
    }

    #[test]
    fn a_prune_drops_the_deltas_before_it_and_keeps_the_ones_after() {
        let k = key("p", Window::Hour, "2026-11-29T09+00:00", "cost");
        let mut first = Changes::default();
        first.add_counter(&k, 4);
        let mut later = Changes::default();
        later.prune(Window::Hour, "2026-11-29T09+00:00");
        later.add_counter(&k, 3);
        first.merge(later);
        assert_eq!(first.counters.get(&k), Some(&3));
        assert_eq!(first.prunes.len(), 1);
    }

    #[test]
    fn cleared_changes_are_empty_and_fill_again() {
        let mut a = Changes::default();
        a.add_history(&record("p", None, &["tool=x"], 2));
        a.count();
        assert!(!a.is_empty());
        a.clear();
        assert!(a.is_empty());
        assert_eq!(a.records(), 0);
        assert!(a.totals.is_empty() && a.tenants.is_empty() && a.tagged.is_empty());
        a.add_history(&record("p", None, &[], 3));
        let mut col = Vec::new();
        pack(&mut col, table_code(TotalsTable::Monthly), Scope::Profile, &["p", "2026-11"]);
        assert_eq!(a.totals[col.as_slice()].cost_nanos, 3, "nothing of before the clear is left");
    }

    #[test]
    fn merged_history_sums_per_row_and_keeps_the_newest_day() {
        let mut a = Changes::default();
        a.add_history(&record("p", None, &[], 2));
        let mut b = Changes::default();
        let mut r = record("p", None, &[], 3);
        r.day = "2026-11-30".into();
        b.add_history(&r);
        b.add_history(&record("p", None, &[], 4));
        a.merge(b);
        let mut col = Vec::new();
        pack(&mut col, table_code(TotalsTable::Monthly), Scope::Profile, &["p", "2026-11"]);
        assert_eq!(a.totals[col.as_slice()].cost_nanos, 9);
        pack(&mut col, TENANT_ROW, Scope::Profile, &["p"]);
        assert_eq!(a.tenants[col.as_slice()], "2026-11-30");
    }

    proptest! {
        /// A damaged row (cut anywhere, or bytes changed) is refused or read; never a panic,
        /// never an allocation past its size.
        #[test]
        fn damaged_rows_are_refused_without_a_panic(cut in 0usize..2000, flips in proptest::collection::vec((0usize..2000, any::<u8>()), 0..8)) {
            let row = sample().encode();
            let mut bad = row[..cut.min(row.len())].to_vec();
            for (at, b) in flips {
                if let Some(x) = bad.get_mut(at) {
                    *x = b;
                }
            }
            let _ = Changes::decode(&bad);
            if cut < row.len() && bad == row[..cut] {
                prop_assert!(Changes::decode(&bad).is_err());
            }
        }

        #[test]
        fn random_bytes_are_refused_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Changes::decode(&bytes);
        }
    }
}
