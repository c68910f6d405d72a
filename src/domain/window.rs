//! Windows in the configured time zone (fixed minutes and hours, calendar days and months),
//! and the clock they read.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// The length of a limit's window. `Minute` and `Hour` are rate windows (fixed minutes and
/// hours of the configured zone's clock); `Daily` and `Monthly` are calendar windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    Minute,
    Hour,
    Daily,
    Monthly,
}

impl Window {
    /// Every window, shortest first.
    pub const ALL: [Window; 4] = [Window::Minute, Window::Hour, Window::Daily, Window::Monthly];

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Daily => "daily",
            Window::Monthly => "monthly",
        }
    }

    /// "Per-minute" / "Hourly" / "Daily" / "Monthly", for messages.
    pub fn title(self) -> &'static str {
        match self {
            Window::Minute => "Per-minute",
            Window::Hour => "Hourly",
            Window::Daily => "Daily",
            Window::Monthly => "Monthly",
        }
    }

    /// A rate window (minute or hour): its refusal is 429 `rate_limited`, which clients
    /// retry after a short wait, instead of 402.
    pub fn is_rate(self) -> bool {
        matches!(self, Window::Minute | Window::Hour)
    }

    /// How long from now a rate window's counter is kept: a little past the window's end, for
    /// a settlement that arrives late. `None` for days and months (kept for their retention).
    pub fn rate_keep(self) -> Option<Duration> {
        match self {
            Window::Minute => Some(Duration::minutes(3)),
            Window::Hour => Some(Duration::hours(2)),
            Window::Daily | Window::Monthly => None,
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One concrete window: a minute, an hour, a calendar day or month in the configured zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bucket {
    pub window: Window,
    /// `2026-11-22` for a day, `2026-11` for a month; for a minute or an hour its local start
    /// with the zone's offset then (`2026-11-22T10:05+01:00`, `2026-11-22T10+01:00`), so the
    /// hour repeated when clocks go back is a bucket of its own.
    pub id: std::sync::Arc<str>,
    /// The instant the window ends (and the next one starts).
    pub resets_at: DateTime<Utc>,
}

/// Source of the current time. Tests inject a fixed clock; production reads the system.
#[derive(Clone, Default)]
pub struct Clock {
    fixed_millis: Option<Arc<AtomicI64>>,
}

impl Clock {
    pub fn system() -> Self {
        Self { fixed_millis: None }
    }

    /// A clock that stays at `at` until moved with [`Clock::set`].
    pub fn fixed(at: DateTime<Utc>) -> Self {
        Self {
            fixed_millis: Some(Arc::new(AtomicI64::new(at.timestamp_millis()))),
        }
    }

    /// Moves a fixed clock; no effect on the system clock.
    pub fn set(&self, at: DateTime<Utc>) {
        if let Some(m) = &self.fixed_millis {
            m.store(at.timestamp_millis(), Ordering::SeqCst);
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &self.fixed_millis {
            Some(m) => DateTime::from_timestamp_millis(m.load(Ordering::SeqCst)).unwrap_or_else(Utc::now),
            None => Utc::now(),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.fixed_millis {
            Some(_) => write!(f, "Clock::fixed({})", self.now()),
            None => f.write_str("Clock::system"),
        }
    }
}

/// The calendar of the configured zone.
#[derive(Debug, Clone, Copy)]
pub struct Calendar {
    pub tz: Tz,
}

impl Calendar {
    pub fn new(tz: Tz) -> Self {
        Self { tz }
    }

    /// The local date of `at` in this zone.
    pub fn local_date(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.tz).date_naive()
    }

    /// The window of kind `window` that contains `at`. Every request asks for its day and
    /// month: the last answer is kept per thread and reused while `at` stays in its window,
    /// so the ids are formatted once per window, not per request.
    pub fn bucket(&self, window: Window, at: DateTime<Utc>) -> Bucket {
        /// Per window kind: the zone, the instant the window starts, the window.
        type Last = [Option<(Tz, DateTime<Utc>, Bucket)>; 4];
        thread_local! {
            static LAST: std::cell::RefCell<Last> = const { std::cell::RefCell::new([None, None, None, None]) };
        }
        let slot = window as usize;
        let hit = LAST.with_borrow(|last| match &last[slot] {
            Some((tz, starts, b)) if *tz == self.tz && *starts <= at && at < b.resets_at => Some(b.clone()),
            _ => None,
        });
        if let Some(b) = hit {
            return b;
        }
        let (starts, bucket) = self.compute_bucket(window, at);
        LAST.with_borrow_mut(|last| last[slot] = Some((self.tz, starts, bucket.clone())));
        bucket
    }

    /// The window containing `at`, with the instant it starts.
    fn compute_bucket(&self, window: Window, at: DateTime<Utc>) -> (DateTime<Utc>, Bucket) {
        if window.is_rate() {
            return self.rate_bucket(window, at);
        }
        let date = self.local_date(at);
        let first = match window {
            Window::Minute | Window::Hour | Window::Daily => date,
            Window::Monthly => date.with_day(1).expect("the first of a month exists"),
        };
        (self.start_of(first), self.bucket_of(window, date))
    }

    fn bucket_of(&self, window: Window, date: NaiveDate) -> Bucket {
        match window {
            Window::Minute | Window::Hour => unreachable!("rate windows are handled above"),
            Window::Daily => Bucket {
                window,
                id: date.format("%Y-%m-%d").to_string().into(),
                resets_at: self.start_of(date + Duration::days(1)),
            },
            Window::Monthly => {
                let next = first_of_next_month(date);
                Bucket {
                    window,
                    id: date.format("%Y-%m").to_string().into(),
                    resets_at: self.start_of(next),
                }
            }
        }
    }

    /// The fixed minute or hour containing `at`: the local clock's minute or hour at the zone's
    /// offset at `at` (zones whose offset is not whole hours start their hours off the UTC hour).
    fn rate_bucket(&self, window: Window, at: DateTime<Utc>) -> (DateTime<Utc>, Bucket) {
        let local = at.with_timezone(&self.tz);
        let offset = local.offset().fix();
        let fixed = at.with_timezone(&offset);
        let (len, start) = match window {
            Window::Minute => (Duration::minutes(1), fixed.with_second(0).and_then(|t| t.with_nanosecond(0))),
            _ => (
                Duration::hours(1),
                fixed.with_minute(0).and_then(|t| t.with_second(0)).and_then(|t| t.with_nanosecond(0)),
            ),
        };
        let start = start.expect("truncating to a minute or an hour at a fixed offset is valid");
        let format = if window == Window::Minute { "%Y-%m-%dT%H:%M%:z" } else { "%Y-%m-%dT%H%:z" };
        let starts = start.with_timezone(&Utc);
        let bucket = Bucket {
            window,
            id: start.format(format).to_string().into(),
            resets_at: starts + len,
        };
        (starts, bucket)
    }

    /// The ids of the daily buckets of the last `days` days, newest first, ending at `at`.
    pub fn recent_days(&self, at: DateTime<Utc>, days: u32) -> Vec<String> {
        let today = self.local_date(at);
        (0..days)
            .map(|i| (today - Duration::days(i64::from(i))).format("%Y-%m-%d").to_string())
            .collect()
    }

    /// The first instant of `date` in this zone. Where midnight does not exist (a DST gap at
    /// 00:00), the day starts at the first instant that does.
    pub fn start_of(&self, date: NaiveDate) -> DateTime<Utc> {
        let midnight = date.and_hms_opt(0, 0, 0).expect("midnight is a valid time");
        let mut probe = midnight;
        // DST gaps are at most a few hours; walk forward in minutes until the local time exists.
        for _ in 0..(24 * 60) {
            if let Some(t) = self.tz.from_local_datetime(&probe).earliest() {
                return t.with_timezone(&Utc);
            }
            probe += Duration::minutes(1);
        }
        Utc.from_utc_datetime(&midnight)
    }
}

fn first_of_next_month(date: NaiveDate) -> NaiveDate {
    let (y, m) = if date.month() == 12 {
        (date.year() + 1, 1)
    } else {
        (date.year(), date.month() + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1).expect("first of a month is a valid date")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn utc_day_and_month() {
        let cal = Calendar::new(chrono_tz::UTC);
        let b = cal.bucket(Window::Daily, utc("2026-11-22T23:59:59Z"));
        assert_eq!(&*b.id, "2026-11-22");
        assert_eq!(b.resets_at, utc("2026-11-23T00:00:00Z"));
        let m = cal.bucket(Window::Monthly, utc("2026-12-31T10:00:00Z"));
        assert_eq!(&*m.id, "2026-12");
        assert_eq!(m.resets_at, utc("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn zone_rolls_at_its_own_midnight() {
        let cal = Calendar::new(chrono_tz::America::New_York);
        // 03:00 UTC on the 1st is still the 30th in New York (UTC-5).
        let d = cal.bucket(Window::Daily, utc("2026-12-01T03:00:00Z"));
        assert_eq!(&*d.id, "2026-11-30");
        assert_eq!(d.resets_at, utc("2026-12-01T05:00:00Z"));
        let m = cal.bucket(Window::Monthly, utc("2026-12-01T03:00:00Z"));
        assert_eq!(&*m.id, "2026-11");
        assert_eq!(m.resets_at, utc("2026-12-01T05:00:00Z"));
    }

    #[test]
    fn dst_day_is_short() {
        let cal = Calendar::new(chrono_tz::Europe::Berlin);
        // 2026-03-29: clocks go forward at 02:00, so the day is 23 hours long.
        let d = cal.bucket(Window::Daily, utc("2026-03-28T23:30:00Z"));
        assert_eq!(&*d.id, "2026-03-29");
        assert_eq!(d.resets_at, utc("2026-03-29T22:00:00Z"));
    }

    #[test]
    fn midnight_in_a_gap_starts_at_first_valid_instant() {
        // Santiago skips 00:00-01:00 when DST starts (2026-09-06).
        let cal = Calendar::new(chrono_tz::America::Santiago);
        let start = cal.start_of(NaiveDate::from_ymd_opt(2026, 9, 6).unwrap());
        assert_eq!(start.with_timezone(&cal.tz).format("%H:%M").to_string(), "01:00");
    }

    #[test]
    fn minutes_and_hours_in_zone_time() {
        let cal = Calendar::new(chrono_tz::Europe::Berlin);
        let m = cal.bucket(Window::Minute, utc("2026-11-22T10:05:42.5Z"));
        assert_eq!(&*m.id, "2026-11-22T11:05+01:00");
        assert_eq!(m.resets_at, utc("2026-11-22T10:06:00Z"));
        let h = cal.bucket(Window::Hour, utc("2026-11-22T10:05:42Z"));
        assert_eq!(&*h.id, "2026-11-22T11+01:00");
        assert_eq!(h.resets_at, utc("2026-11-22T11:00:00Z"));
        // Half-hour zones start their hours at :30 UTC.
        let india = Calendar::new(chrono_tz::Asia::Kolkata);
        let h = india.bucket(Window::Hour, utc("2026-11-22T10:05:00Z"));
        assert_eq!(&*h.id, "2026-11-22T15+05:30");
        assert_eq!(h.resets_at, utc("2026-11-22T10:30:00Z"));
    }

    #[test]
    fn the_repeated_hour_when_clocks_go_back_is_its_own_bucket() {
        let cal = Calendar::new(chrono_tz::Europe::Berlin);
        // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:xx local happens twice.
        let first = cal.bucket(Window::Hour, utc("2026-10-25T00:30:00Z"));
        let second = cal.bucket(Window::Hour, utc("2026-10-25T01:30:00Z"));
        assert_eq!(&*first.id, "2026-10-25T02+02:00");
        assert_eq!(&*second.id, "2026-10-25T02+01:00");
        assert_eq!(first.resets_at, utc("2026-10-25T01:00:00Z"));
        assert_eq!(second.resets_at, utc("2026-10-25T02:00:00Z"));
    }

    #[test]
    fn fixed_clock_moves() {
        let c = Clock::fixed(utc("2026-01-01T00:00:00Z"));
        c.set(utc("2026-02-01T00:00:00Z"));
        assert_eq!(c.now(), utc("2026-02-01T00:00:00Z"));
    }
}
