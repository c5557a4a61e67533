//! Run history for charts: runs, items and task failures per hour over the
//! last day and per day over the last month.
//!
//! The history is a small, bounded table — at most [`HOURS`] hourly and
//! [`DAYS`] daily buckets — kept as one `config` row ([`HISTORY_ROW`],
//! JSON) and written by the engine at the end of each run, in the same
//! transaction as the last run and the totals. So a status page reads one
//! row, never the run log, and the table never grows: each write drops the
//! buckets that fell out of their window. One row rather than a table of
//! its own keeps it on both stores (SQLite and a PostgreSQL schema) with no
//! schema change, and costs a run about 2 KB of writing at most.
//!
//! Buckets are on UTC hour and day boundaries of the run's start. A clock
//! set back leaves "future" buckets in place until they age out; the count
//! bound holds regardless.

use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::task::RunReport;

/// The `config` row holding the [`History`].
pub const HISTORY_ROW: &str = "backoffice-history";

/// Hourly buckets kept: the last day, the current hour included.
pub const HOURS: usize = 24;
/// Daily buckets kept: the last month, today included.
pub const DAYS: usize = 31;

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// One bucket: what the runs that started in `[start, start + span)` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Unix time the bucket starts (a whole UTC hour or day).
    pub start: i64,
    /// Runs recorded.
    pub runs: u64,
    /// Items handled.
    pub items: u64,
    /// Task runs that failed.
    pub failures: u64,
}

/// The hourly and daily buckets, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Hourly buckets, at most [`HOURS`].
    pub hours: Vec<Bucket>,
    /// Daily buckets, at most [`DAYS`].
    pub days: Vec<Bucket>,
}

impl History {
    /// The stored history. A missing or malformed row reads as empty (the
    /// history restarts), never as an error: charts must not stop a run
    /// from being recorded or a page from being shown.
    pub fn load<'a>(db: impl Into<Db<'a>>) -> History {
        db.into()
            .config_get(HISTORY_ROW)
            .ok()
            .flatten()
            .and_then(|j| serde_json::from_str::<History>(&j).ok())
            .map(History::bounded)
            .unwrap_or_default()
    }

    /// Counts one more run in its hour and its day, and drops the buckets
    /// that are out of their window as of that run.
    pub fn add(&mut self, report: &RunReport) {
        let t = report.started;
        let one = Bucket {
            start: 0,
            runs: 1,
            items: report.items(),
            failures: report.failures() as u64,
        };
        bump(
            &mut self.hours,
            t.div_euclid(HOUR).saturating_mul(HOUR),
            one,
        );
        bump(&mut self.days, t.div_euclid(DAY).saturating_mul(DAY), one);
        self.prune(t);
    }

    /// Drops buckets older than the window ending at `now`, then keeps at
    /// most the newest [`HOURS`] and [`DAYS`].
    pub fn prune(&mut self, now: i64) {
        let hour = now.div_euclid(HOUR).saturating_mul(HOUR);
        let day = now.div_euclid(DAY).saturating_mul(DAY);
        let first_hour = hour.saturating_sub((HOURS as i64 - 1) * HOUR);
        let first_day = day.saturating_sub((DAYS as i64 - 1) * DAY);
        self.hours.retain(|b| b.start >= first_hour);
        self.days.retain(|b| b.start >= first_day);
        let taken = std::mem::take(self);
        *self = taken.bounded();
    }

    /// Sorted, and no more than the bounds (the newest kept).
    fn bounded(mut self) -> History {
        for (v, max) in [(&mut self.hours, HOURS), (&mut self.days, DAYS)] {
            v.sort_by_key(|b| b.start);
            v.dedup_by_key(|b| b.start);
            if v.len() > max {
                v.drain(..v.len() - max);
            }
        }
        self
    }

    /// The last day as exactly [`HOURS`] buckets ending with the hour of
    /// `now` (empty hours as zeros), for a chart.
    pub fn hourly(&self, now: i64) -> Vec<Bucket> {
        series(
            &self.hours,
            now.div_euclid(HOUR).saturating_mul(HOUR),
            HOUR,
            HOURS,
        )
    }

    /// The last month as exactly [`DAYS`] buckets ending with the day of
    /// `now`.
    pub fn daily(&self, now: i64) -> Vec<Bucket> {
        series(
            &self.days,
            now.div_euclid(DAY).saturating_mul(DAY),
            DAY,
            DAYS,
        )
    }

    /// True if no run is recorded.
    pub fn is_empty(&self) -> bool {
        self.hours.is_empty() && self.days.is_empty()
    }

    /// As stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn bump(v: &mut Vec<Bucket>, start: i64, one: Bucket) {
    match v.iter_mut().find(|b| b.start == start) {
        Some(b) => {
            b.runs = b.runs.saturating_add(one.runs);
            b.items = b.items.saturating_add(one.items);
            b.failures = b.failures.saturating_add(one.failures);
        }
        None => v.push(Bucket { start, ..one }),
    }
}

fn series(have: &[Bucket], last: i64, span: i64, n: usize) -> Vec<Bucket> {
    (0..n as i64)
        .map(|i| {
            let start = last.saturating_sub((n as i64 - 1 - i).saturating_mul(span));
            have.iter()
                .find(|b| b.start == start)
                .copied()
                .unwrap_or(Bucket {
                    start,
                    ..Bucket::default()
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskResult;

    fn run(at: i64, items: u64, failed: bool) -> RunReport {
        RunReport {
            started: at,
            elapsed_us: 1,
            pid: 1,
            tasks: vec![TaskResult {
                name: "t".into(),
                items,
                error: failed.then(|| "boom".into()),
                ..TaskResult::default()
            }],
        }
    }

    #[test]
    fn runs_land_in_their_hour_and_day() {
        let mut h = History::default();
        let t0 = 1_800_000_000 - 1_800_000_000 % DAY; // a UTC midnight
        h.add(&run(t0 + 10, 3, false));
        h.add(&run(t0 + 20, 2, true));
        h.add(&run(t0 + HOUR + 5, 1, false));
        assert_eq!(h.hours.len(), 2);
        assert_eq!(
            h.hours[0],
            Bucket {
                start: t0,
                runs: 2,
                items: 5,
                failures: 1
            }
        );
        assert_eq!(h.days.len(), 1);
        assert_eq!((h.days[0].runs, h.days[0].items), (3, 6));
        let hourly = h.hourly(t0 + HOUR + 10);
        assert_eq!(hourly.len(), HOURS);
        assert_eq!(hourly[HOURS - 1].runs, 1);
        assert_eq!(hourly[HOURS - 2].runs, 2);
        assert_eq!(h.daily(t0).len(), DAYS);
    }

    #[test]
    fn stays_bounded_over_months_of_runs() {
        let mut h = History::default();
        let t0 = 1_800_000_000;
        // A run every 20 minutes for 90 days.
        for i in 0..(90 * 72) {
            h.add(&run(t0 + i * 1200, 1, false));
            assert!(h.hours.len() <= HOURS && h.days.len() <= DAYS);
        }
        assert_eq!(h.hours.len(), HOURS);
        assert_eq!(h.days.len(), DAYS);
        assert!(h.hours.iter().all(|b| b.runs == 3), "{:?}", h.hours);
        assert!(h.to_json().len() < 4096, "{}", h.to_json().len());
    }

    #[test]
    fn a_damaged_row_reads_as_empty() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        assert!(History::load(&conn).is_empty());
        conn.execute(
            "INSERT INTO config(name, value) VALUES (?1, '{oops')",
            [HISTORY_ROW],
        )
        .unwrap();
        assert!(History::load(&conn).is_empty());
    }
}
