//! When daily digests are due: the setting `email-digest-time`
//! (`07:00 Europe/Paris`) and the rule the digest task applies to it.
//!
//! # The model
//!
//! A [`DigestTime`] is a wall-clock time and a time zone. Each local
//! calendar day has one **boundary**: the instant at which that day's
//! clock reads `HH:MM` in the zone. A digest covers the events between two
//! boundaries, and becomes due when a boundary passes; the next request
//! (or cron run) after it starts the work, as with every other task.
//!
//! The default, `12:00 UTC`, is where Fossil's digest day rolls over
//! (Fossil stores the integer Julian day of its last digest, and the
//! Julian day changes at noon UTC).
//!
//! # Daylight saving time
//!
//! Once or twice a year the local `HH:MM` does not occur exactly once:
//!
//! * **Spring forward (a gap)**: `HH:MM` does not exist that day. The
//!   boundary is `HH:MM` read with the offset from before the jump, so it
//!   lands as far past the jump as `HH:MM` was: with a one-hour jump at
//!   02:00, `02:30` becomes `03:30`. (RFC 5545's rule, JavaScript
//!   Temporal's and jiff's "compatible" disambiguation.)
//! * **Fall back (a fold)**: `HH:MM` occurs twice. The boundary is the
//!   first occurrence; the second is not a boundary.
//!
//! So each local calendar day has exactly one boundary, consecutive
//! boundaries are a day apart give or take the clock change (23 to 25
//! hours for a one-hour change, 23.5 to 24.5 on Lord Howe Island, whose
//! clocks move by 30 minutes), and a digest never comes twice in one day
//! nor skips one. Two rare exceptions, both where a clock change crosses
//! midnight: where a gap spans midnight (America/Nuuk springs from Saturday
//! 23:00 to Sunday 00:00), a 23:30 boundary falling in it moves to 00:30 on
//! Sunday, which then has two boundaries 23 hours apart and Saturday none;
//! and a day a zone skips entirely (Samoa jumped over 2011-12-30) has none.
//! Boundaries always strictly increase and bracket every instant; a test
//! (`every_zone_every_transition`, ignored by default) checks that for
//! every zone in the database around every transition from 1970 to 2039.
//!
//! Time zone data comes from the copy of the IANA database compiled into
//! the binary, not from the machine's `/usr/share/zoneinfo`, so the same
//! setting gives the same instants everywhere. Zone names are matched
//! without regard to case and kept in their canonical spelling.
//!
//! # When a digest is due
//!
//! The digest task stores `last`, the boundary that ended the last window
//! it handled, and asks [`DigestTime::digest_due`] with the current time:
//!
//! * A boundary has passed since `last`: [`DigestDue::Due`], the window from
//!   `last` to the latest boundary. A server idle for three days gets one
//!   window covering the three days (not three digests, and not none); a
//!   year idle, one window covering the year. After handling it the task
//!   stores `window_end` as the new `last`.
//! * A fresh repository (`last` is `None`): the window is the last full
//!   digest day, from the boundary before the latest one to the latest one.
//!   Events older than that are never sent as a digest: a new subscriber
//!   or a new installation does not get a mail of all history. It is due at
//!   once, so the first run settles `last`; if the window holds no events,
//!   no digest is sent (an empty digest never is).
//! * Otherwise [`DigestDue::NotUntil`] the next boundary.
//!
//! Windows are half-open, `window_start <= t < window_end`, so consecutive
//! windows tile time without overlap. Changing the setting moves the
//! boundaries but not `last`: the next window runs from the last boundary
//! sent under the old setting to the first one passed under the new, so
//! nothing is skipped or repeated (the window may be shorter or longer than
//! a day, once).
//!
//! ## A clock stepped backwards
//!
//! If `last` is later than `now`, the clock was stepped back after the last
//! digest (or a clock running fast wrote `last`). No window is produced:
//! its start would be after its end. Two cases:
//!
//! * `last` is at most the next boundary by the current clock (the clock
//!   moved back by less than about a day, typically seconds by NTP just after
//!   a digest went out): [`DigestDue::NotUntil`] the first boundary after
//!   `last`. The day just sent is not sent again; the next digest is at most
//!   one extra day late.
//! * `last` is further ahead: waiting for the clock to catch up could take
//!   years (a clock set to the wrong year, then fixed). Instead,
//!   [`DigestDue::ClockBehind`] tells the task to replace `last` with the
//!   latest boundary by the current clock, sending nothing. From there the
//!   schedule runs normally: the next digest comes at the next boundary.
//!   The task should log it; it is worth a warning.
//!
//! Event times come from the same clock, so around a step they can fall in
//! a window already handled. A digest task that selects "events not yet in
//! a digest, with time before `window_end`" (Fossil's `sentDigest` flag)
//! rather than "events with time in the window" loses none to a clock step;
//! `window_start` then serves for the digest's heading.
//!
//! Everything here is pure: no database, no clock reads. Callers pass `now`
//! (Unix seconds, as everywhere in this crate).

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::{TimeZone, TimeZoneDatabase};

/// The setting's default: noon UTC, where Fossil's digest day rolls over.
pub const DEFAULT: &str = "12:00 UTC";

/// How to write the setting, for error messages.
const FORM: &str = "expected HH:MM or HH:MM ZONE, e.g. `07:00 Europe/Paris`";

/// A parsed `email-digest-time`: the local time of day at which the digest
/// day ends, in a time zone.
///
/// Two values are equal when they name the same time in the same zone,
/// however they were written (`7:00 europe/paris` equals
/// `07:00 Europe/Paris`).
#[derive(Clone, Debug)]
pub struct DigestTime {
    hour: i8,
    minute: i8,
    tz: TimeZone,
    /// The canonical zone name (`UTC`, `Europe/Paris`).
    zone: String,
    /// The text as given, trimmed.
    text: String,
}

/// What the digest task should do now; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestDue {
    /// Send a digest of the events in `window_start <= t < window_end`, then
    /// store `window_end` as the new `last`.
    Due {
        /// The previous `last`, or one digest day before `window_end` on a
        /// fresh repository.
        window_start: i64,
        /// The latest boundary at or before `now`.
        window_end: i64,
    },
    /// Nothing to send before this instant (a boundary, later than `now`).
    NotUntil(i64),
    /// `last` is more than one boundary ahead of the clock: the clock was
    /// stepped back. Send nothing; store `reset_to` (the latest boundary at
    /// or before `now`) as the new `last`, and log a warning.
    ClockBehind {
        /// The new `last`.
        reset_to: i64,
    },
}

impl DigestDue {
    /// The same answer in the engine's terms, for [`backoffice::Task::due`]:
    /// `Now` when the task has something to do (send, or reset `last`).
    pub fn task_due(self) -> backoffice::Due {
        match self {
            DigestDue::Due { .. } | DigestDue::ClockBehind { .. } => backoffice::Due::Now,
            DigestDue::NotUntil(t) => backoffice::Due::At(t),
        }
    }
}

impl Default for DigestTime {
    fn default() -> Self {
        DigestTime {
            hour: 12,
            minute: 0,
            tz: TimeZone::UTC,
            zone: "UTC".into(),
            text: DEFAULT.into(),
        }
    }
}

impl PartialEq for DigestTime {
    fn eq(&self, other: &Self) -> bool {
        self.hour == other.hour && self.minute == other.minute && self.zone == other.zone
    }
}

impl Eq for DigestTime {}

impl FromStr for DigestTime {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        DigestTime::parse(s)
    }
}

/// The canonical form, `07:00 Europe/Paris`: what `setting` stores.
impl fmt::Display for DigestTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02} {}", self.hour, self.minute, self.zone)
    }
}

/// Parses 1 or 2 ASCII digits (`max_len`), nothing else (no sign, no space).
fn digits(s: &str, max_len: usize) -> Option<i8> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl DigestTime {
    /// The validator of `email-digest-time`: the value normalised.
    pub fn setting(value: &str) -> Result<String, String> {
        DigestTime::parse(value).map(|d| d.to_string())
    }

    /// Parses `HH:MM ZONE`, `HH:MM UTC` or `HH:MM` (meaning UTC). The zone
    /// is an IANA name (`Europe/Paris`, `America/New_York`). The error says
    /// what is wrong.
    pub fn parse(s: &str) -> Result<DigestTime, String> {
        let text = s.trim();
        let mut words = text.split_whitespace();
        let Some(time) = words.next() else {
            return Err(format!("empty; {FORM}"));
        };
        let zone = words.next();
        if words.next().is_some() {
            return Err(format!("too many words in `{text}`; {FORM}"));
        }

        let Some((h, m)) = time.split_once(':') else {
            return Err(format!("`{time}` is not a time; {FORM}"));
        };
        let hour = match digits(h, 2) {
            Some(h) if h <= 23 => h,
            _ => return Err(format!("hour must be 0-23, got `{h}`")),
        };
        // Exactly two digits: `07:5` is more likely a typo for 07:50 than
        // a way of writing 07:05.
        let minute = match digits(m, 2) {
            Some(n) if n <= 59 && m.len() == 2 => n,
            _ => return Err(format!("minute must be 00-59, got `{m}`")),
        };

        let (tz, zone) = match zone {
            None => (TimeZone::UTC, "UTC".to_owned()),
            Some(z) if z.eq_ignore_ascii_case("UTC") => (TimeZone::UTC, "UTC".to_owned()),
            Some(z) => {
                let unknown = || {
                    format!(
                        "unknown time zone `{z}` (expected an IANA name such as Europe/Paris, or UTC)"
                    )
                };
                // The compiled-in database, never the machine's: the same
                // setting must give the same instants on every machine.
                let tz = TimeZoneDatabase::bundled().get(z).map_err(|_| unknown())?;
                // jiff answers `Etc/Unknown` with a zone that behaves as
                // UTC; a setting naming it is a mistake.
                let name = tz.iana_name().ok_or_else(unknown)?.to_owned();
                if name.eq_ignore_ascii_case("Etc/Unknown") {
                    return Err(unknown());
                }
                (tz, name)
            }
        };

        Ok(DigestTime {
            hour,
            minute,
            tz,
            zone,
            text: text.to_owned(),
        })
    }

    /// The hour, 0-23.
    pub fn hour(&self) -> i8 {
        self.hour
    }

    /// The minute, 0-59.
    pub fn minute(&self) -> i8 {
        self.minute
    }

    /// The time zone.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// The canonical name of the time zone (`UTC`, `Europe/Paris`).
    pub fn zone_name(&self) -> &str {
        &self.zone
    }

    /// The setting's text as it was given (trimmed).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The latest boundary at or before `t`: the instant, not after `t`, at
    /// which some local day's clock read `HH:MM` (with the DST rules of the
    /// module docs).
    pub fn boundary_at_or_before(&self, t: i64) -> i64 {
        self.at_or_before(t).1
    }

    /// The first boundary after `t` (strictly).
    pub fn boundary_after(&self, t: i64) -> i64 {
        let (mut day, b) = self.at_or_before(t);
        // The next day's boundary, or the one after if a day was skipped
        // (equal instants) or does not exist. Two steps always suffice;
        // the third is margin.
        for _ in 0..3 {
            let Ok(next) = day.tomorrow() else { break };
            day = next;
            match self.boundary_of(day) {
                Some(n) if n > t => return n,
                _ => {}
            }
        }
        // Only at the very end of the representable range.
        b.max(t).saturating_add(86_400)
    }

    /// What the digest task should do at `now`, given `last`, the stored
    /// end of the last window handled (`None` on a fresh repository). See
    /// the [module docs](self) for the rules and why.
    pub fn digest_due(&self, last: Option<i64>, now: i64) -> DigestDue {
        let end = self.boundary_at_or_before(now);
        let Some(last) = last else {
            return DigestDue::Due {
                window_start: self.boundary_at_or_before(end - 1),
                window_end: end,
            };
        };
        if last < end {
            return DigestDue::Due {
                window_start: last,
                window_end: end,
            };
        }
        if last <= now {
            // No boundary in (last, now]: the next one is after now.
            return DigestDue::NotUntil(self.boundary_after(now));
        }
        // The clock is behind `last`.
        if last <= self.boundary_after(now) {
            DigestDue::NotUntil(self.boundary_after(last))
        } else {
            DigestDue::ClockBehind { reset_to: end }
        }
    }

    /// The boundary of a local calendar day, or `None` if it cannot be
    /// represented (the ends of jiff's range of years -9999..=9999).
    fn boundary_of(&self, day: Date) -> Option<i64> {
        let wall = day.at(self.hour, self.minute, 0, 0);
        // `compatible`: in a gap, the offset from before the gap (02:30
        // becomes 03:30); in a fold, also the offset from before, which
        // is the first occurrence.
        let ts = self.tz.to_ambiguous_timestamp(wall).compatible().ok()?;
        Some(ts.as_second())
    }

    /// The latest boundary at or before `t`, and the local day it belongs
    /// to.
    fn at_or_before(&self, t: i64) -> (Date, i64) {
        // Keep clear of the ends of jiff's range so that the days around
        // `t` all exist; real clocks never get near them.
        let lo = Timestamp::MIN.as_second() + 30 * 86_400;
        let hi = Timestamp::MAX.as_second() - 30 * 86_400;
        let t = t.clamp(lo, hi);
        let ts = Timestamp::from_second(t).unwrap_or(Timestamp::UNIX_EPOCH);
        let today = self.tz.to_datetime(ts).date();
        // Boundaries grow with the day, so going backwards the first one at
        // or before `t` is the latest. Starting from tomorrow covers a clock
        // falling back across midnight after reaching HH:MM (00:30 back to
        // 23:30), where `t` would read as the day before a boundary that
        // has passed; no zone has done so since 1970, but it costs one
        // lookup. Five days cover every offset change on record (the
        // largest, a skipped day, is 24 hours).
        let mut day = today.tomorrow().unwrap_or(today);
        for _ in 0..5 {
            match self.boundary_of(day) {
                Some(b) if b <= t => return (day, b),
                _ => {}
            }
            match day.yesterday() {
                Ok(d) => day = d,
                Err(_) => break,
            }
        }
        // Unreachable within the clamped range; a sane answer regardless.
        (today, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: i64 = 3600;
    const DAY: i64 = 86_400;

    fn dt(s: &str) -> DigestTime {
        DigestTime::parse(s).unwrap()
    }

    /// An instant written in UTC, independent of the code under test.
    fn at(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    /// Checks that `bs` are consecutive boundaries of `d`, from every side.
    fn assert_chain(d: &DigestTime, bs: &[&str]) {
        let bs: Vec<i64> = bs.iter().map(|s| at(s)).collect();
        for (i, &b) in bs.iter().enumerate() {
            assert_eq!(d.boundary_at_or_before(b), b, "{d}: {b} is a boundary");
            assert_eq!(d.boundary_after(b - 1), b, "{d}: first after {b}-1");
            if let Some(&next) = bs.get(i + 1) {
                assert_eq!(d.boundary_after(b), next, "{d}: next after {b}");
                assert_eq!(d.boundary_at_or_before(next - 1), b, "{d}");
                assert_eq!(d.boundary_at_or_before((b + next) / 2), b, "{d}");
            }
        }
    }

    // ---- parsing ----

    #[test]
    fn parses_the_accepted_forms() {
        let d = dt("07:00 Europe/Paris");
        assert_eq!(
            (d.hour(), d.minute(), d.zone_name()),
            (7, 0, "Europe/Paris")
        );
        assert_eq!(d.text(), "07:00 Europe/Paris");

        let d = dt("  23:59  ");
        assert_eq!((d.hour(), d.minute(), d.zone_name()), (23, 59, "UTC"));
        assert_eq!(d.text(), "23:59");
        assert_eq!(d.to_string(), "23:59 UTC");

        assert_eq!(dt("0:05 utc").to_string(), "00:05 UTC");
        assert_eq!(dt("12:00 UTC"), DigestTime::default());
        assert_eq!(dt("12:00"), DigestTime::default());
        assert_eq!(dt(DEFAULT), DigestTime::default());
        assert_eq!(DigestTime::default().text(), DEFAULT);

        // Case-insensitive, stored canonically; equality ignores spelling.
        let d: DigestTime = "7:00 europe/PARIS".parse().unwrap();
        assert_eq!(d.zone_name(), "Europe/Paris");
        assert_eq!(d.to_string(), "07:00 Europe/Paris");
        assert_eq!(d, dt("07:00 Europe/Paris"));
        assert_eq!(d.text(), "7:00 europe/PARIS");
        assert_ne!(d, dt("07:01 Europe/Paris"));
        assert_ne!(d, dt("07:00 Europe/Berlin"));

        assert_eq!(dt("05:30 Asia/Kolkata").zone_name(), "Asia/Kolkata");
        assert_eq!(
            dt("02:15 Australia/Lord_Howe").zone_name(),
            "Australia/Lord_Howe"
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |s: &str| DigestTime::parse(s).unwrap_err();
        assert!(
            err("24:00").contains("hour must be 0-23"),
            "{}",
            err("24:00")
        );
        assert!(err("-1:00").contains("hour must be 0-23"));
        assert!(err("x:00").contains("hour must be 0-23"));
        assert!(err("007:00").contains("hour must be 0-23"));
        assert!(err("12:60").contains("minute must be 00-59"));
        assert!(err("12:5").contains("minute must be 00-59"));
        assert!(err("12:").contains("minute must be 00-59"));
        assert!(err("12:00:00").contains("minute must be 00-59"));
        assert!(err("12:+5").contains("minute must be 00-59"));
        assert_eq!(
            err("07:00 Europe/Pariss"),
            "unknown time zone `Europe/Pariss` (expected an IANA name such as Europe/Paris, or UTC)"
        );
        assert!(err("07:00 Etc/Unknown").contains("unknown time zone"));
        assert!(err("07:00 +02:00").contains("unknown time zone `+02:00`"));
        assert!(err("").starts_with("empty"));
        assert!(err("   ").starts_with("empty"));
        assert!(err("noon").contains("`noon` is not a time"));
        assert!(err("07:00 Europe/Paris extra").contains("too many words"));
        // Every error shows the expected form or the offending part.
        assert!(err("noon").contains("07:00 Europe/Paris"));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "00:00",
            "7:05 europe/paris",
            "23:59 America/New_York",
            "12:30 Australia/Lord_Howe",
        ] {
            let d = dt(s);
            assert_eq!(dt(&d.to_string()), d);
            assert_eq!(dt(&d.to_string()).to_string(), d.to_string());
        }
    }

    // ---- boundaries, zone by zone, across 2026's transitions ----

    #[test]
    fn utc_boundaries() {
        let d = DigestTime::default();
        assert_chain(
            &d,
            &[
                "2026-03-28T12:00:00Z",
                "2026-03-29T12:00:00Z",
                "2026-03-30T12:00:00Z",
            ],
        );
        let t = at("2026-07-01T11:59:59Z");
        assert_eq!(d.boundary_at_or_before(t), at("2026-06-30T12:00:00Z"));
        assert_eq!(d.boundary_after(t), at("2026-07-01T12:00:00Z"));
        assert_chain(
            &dt("00:00"),
            &["2026-12-31T00:00:00Z", "2027-01-01T00:00:00Z"],
        );
    }

    #[test]
    fn paris_boundaries() {
        // CET (+1) to CEST (+2) at 2026-03-29 01:00Z; back at 2026-10-25 01:00Z.
        let d = dt("07:00 Europe/Paris");
        assert_chain(
            &d,
            &[
                "2026-03-28T06:00:00Z",
                "2026-03-29T05:00:00Z", // 23 hours
                "2026-03-30T05:00:00Z",
            ],
        );
        assert_chain(
            &d,
            &[
                "2026-10-24T05:00:00Z",
                "2026-10-25T06:00:00Z", // 25 hours
                "2026-10-26T06:00:00Z",
            ],
        );
        // 02:30 does not exist on 03-29: it becomes 03:30 CEST.
        let d = dt("02:30 Europe/Paris");
        assert_chain(
            &d,
            &[
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:30:00Z", // 03:30 CEST
                "2026-03-30T00:30:00Z",
            ],
        );
        let wall = d
            .time_zone()
            .to_datetime(Timestamp::from_second(at("2026-03-29T01:30:00Z")).unwrap());
        assert_eq!(wall.to_string(), "2026-03-29T03:30:00");
        // 02:30 happens twice on 10-25: the first (CEST) is the boundary.
        assert_chain(
            &d,
            &[
                "2026-10-24T00:30:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:30:00Z",
            ],
        );
        // The second occurrence is not a boundary.
        let second = at("2026-10-25T01:30:00Z");
        assert_eq!(d.boundary_at_or_before(second), at("2026-10-25T00:30:00Z"));
        assert_eq!(d.boundary_after(second), at("2026-10-26T01:30:00Z"));
    }

    #[test]
    fn new_york_boundaries() {
        // EST (-5) to EDT (-4) at 2026-03-08 07:00Z; back at 2026-11-01 06:00Z.
        let d = dt("07:00 America/New_York");
        assert_chain(
            &d,
            &[
                "2026-03-07T12:00:00Z",
                "2026-03-08T11:00:00Z",
                "2026-03-09T11:00:00Z",
            ],
        );
        assert_chain(
            &d,
            &[
                "2026-10-31T11:00:00Z",
                "2026-11-01T12:00:00Z",
                "2026-11-02T12:00:00Z",
            ],
        );
        // The gap: 02:30 becomes 03:30 EDT.
        assert_chain(
            &dt("02:30 America/New_York"),
            &[
                "2026-03-07T07:30:00Z",
                "2026-03-08T07:30:00Z",
                "2026-03-09T06:30:00Z",
            ],
        );
        // The fold: 01:30 EDT, not 01:30 EST an hour later.
        assert_chain(
            &dt("01:30 America/New_York"),
            &[
                "2026-10-31T05:30:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-02T06:30:00Z",
            ],
        );
    }

    #[test]
    fn kolkata_boundaries() {
        // +05:30 all year: every day 24 hours, including the days other
        // zones change.
        let d = dt("07:00 Asia/Kolkata");
        assert_chain(
            &d,
            &[
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:30:00Z",
                "2026-03-30T01:30:00Z",
            ],
        );
        assert_chain(
            &d,
            &[
                "2026-10-24T01:30:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-26T01:30:00Z",
            ],
        );
        // Midnight local is the evening before in UTC.
        assert_chain(
            &dt("00:00 Asia/Kolkata"),
            &["2026-06-30T18:30:00Z", "2026-07-01T18:30:00Z"],
        );
    }

    #[test]
    fn lord_howe_boundaries() {
        // +11 (LHDT) to +10:30 (LHST) at 2026-04-05 02:00 local (04-04
        // 15:00Z), back to +11 at 2026-10-04 02:00 local (10-03 15:30Z).
        let d = dt("12:00 Australia/Lord_Howe");
        assert_chain(
            &d,
            &[
                "2026-04-04T01:00:00Z",
                "2026-04-05T01:30:00Z", // 24.5 hours
                "2026-04-06T01:30:00Z",
            ],
        );
        assert_chain(
            &d,
            &[
                "2026-10-03T01:30:00Z",
                "2026-10-04T01:00:00Z", // 23.5 hours
                "2026-10-05T01:00:00Z",
            ],
        );
        // The fold (01:30-02:00 twice): 01:45 LHDT.
        assert_chain(
            &dt("01:45 Australia/Lord_Howe"),
            &[
                "2026-04-03T14:45:00Z",
                "2026-04-04T14:45:00Z",
                "2026-04-05T15:15:00Z",
            ],
        );
        // The gap (02:00-02:30 missing): 02:15 becomes 02:45 LHDT.
        let d = dt("02:15 Australia/Lord_Howe");
        assert_chain(
            &d,
            &[
                "2026-10-02T15:45:00Z",
                "2026-10-03T15:45:00Z",
                "2026-10-04T15:15:00Z",
            ],
        );
        let wall = d
            .time_zone()
            .to_datetime(Timestamp::from_second(at("2026-10-03T15:45:00Z")).unwrap());
        assert_eq!(wall.to_string(), "2026-10-04T02:45:00");
    }

    #[test]
    fn a_skipped_day_has_no_boundary_of_its_own() {
        // Samoa went from 2011-12-29 24:00 (-10) to 2011-12-31 00:00 (+14).
        let d = dt("07:00 Pacific/Apia");
        let b29 = at("2011-12-29T17:00:00Z"); // 07:00 -10
        let b31 = at("2011-12-30T17:00:00Z"); // 07:00 +14
        assert_eq!(d.boundary_after(b29), b31);
        assert_eq!(d.boundary_at_or_before(b31 - 1), b29);
        assert_eq!(d.boundary_after(b31), b31 + DAY);
    }

    #[test]
    fn extreme_times_do_not_panic() {
        for d in [
            DigestTime::default(),
            dt("02:30 Europe/Paris"),
            dt("23:59 Pacific/Kiritimati"),
        ] {
            for t in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
                let b = d.boundary_at_or_before(t);
                let a = d.boundary_after(t);
                assert!(a > b || t >= Timestamp::MAX.as_second(), "{d} {t}");
                let _ = d.digest_due(Some(t), t);
                let _ = d.digest_due(None, t);
                let _ = d.digest_due(Some(i64::MAX), t);
                let _ = d.digest_due(Some(i64::MIN), t);
            }
        }
    }

    /// Every day from 2025-12-31 to 2027-01-01, for every quarter hour of
    /// the day in every test zone: one boundary per local day, at HH:MM
    /// (or where the gap ends), 23-25 hours apart (23.5-24.5 on Lord Howe).
    #[test]
    fn one_boundary_per_local_day_all_year() {
        for zone in ZONES {
            for q in 0..96 {
                let d =
                    DigestTime::parse(&format!("{:02}:{:02} {zone}", q / 4, q % 4 * 15)).unwrap();
                walk_year(&d);
            }
        }
    }

    fn walk_year(d: &DigestTime) {
        let tz = d.time_zone();
        let local = |t: i64| tz.to_datetime(Timestamp::from_second(t).unwrap());
        let offset = |t: i64| i64::from(tz.to_offset(Timestamp::from_second(t).unwrap()).seconds());
        let (lo, hi) = spacing(d);
        let mut b = d.boundary_at_or_before(at("2025-12-31T12:00:00Z"));
        let end = at("2027-01-02T00:00:00Z");
        while b < end {
            let next = d.boundary_after(b);
            assert!((lo..=hi).contains(&(next - b)), "{d}: {b} -> {next}");
            assert_eq!(
                local(next).date(),
                local(b).date().tomorrow().unwrap(),
                "{d}: {next}"
            );
            assert_eq!(d.boundary_at_or_before(next), next);
            assert_eq!(d.boundary_at_or_before(next - 1), b);
            // At HH:MM, or in a gap, shifted by the gap (the offset change
            // over the past half day).
            let wall = local(next).time();
            let want = jiff::civil::time(d.hour(), d.minute(), 0, 0);
            if wall != want {
                let jump = offset(next) - offset(next - DAY / 2);
                assert!(jump > 0, "{d}: {next} reads {wall} without a gap");
                assert_eq!(
                    wall,
                    want + jiff::SignedDuration::from_secs(jump),
                    "{d}: {next}"
                );
            } else {
                // In a fold, the first occurrence: half an hour or an hour
                // earlier, the wall clock did not read HH:MM that day.
                for back in [HOUR / 2, HOUR] {
                    assert_ne!(
                        local(next - back),
                        local(next),
                        "{d}: {next} is a second occurrence"
                    );
                }
            }
            b = next;
        }
    }

    const ZONES: [&str; 5] = [
        "UTC",
        "Europe/Paris",
        "America/New_York",
        "Asia/Kolkata",
        "Australia/Lord_Howe",
    ];

    /// The allowed distance between consecutive boundaries of `d`.
    fn spacing(d: &DigestTime) -> (i64, i64) {
        match d.zone_name() {
            "UTC" | "Asia/Kolkata" => (DAY, DAY),
            "Australia/Lord_Howe" => (DAY - HOUR / 2, DAY + HOUR / 2),
            _ => (DAY - HOUR, DAY + HOUR),
        }
    }

    #[test]
    fn a_gap_across_midnight_moves_the_boundary_to_the_next_day() {
        // America/Nuuk: -02 to -01 at 2026-03-29 01:00Z, Saturday 23:00
        // local becoming Sunday 00:00. Saturday's 23:30 is 00:30 Sunday.
        let d = dt("23:30 America/Nuuk");
        assert_chain(
            &d,
            &[
                "2026-03-28T01:30:00Z", // Friday 23:30 -02
                "2026-03-29T01:30:00Z", // Saturday's, read as Sunday 00:30 -01
                "2026-03-30T00:30:00Z", // Sunday 23:30 -01, 23 hours later
            ],
        );
    }

    /// Every zone in the database, every half hour of the day, two days
    /// either side of every transition from 1970 to 2039: boundaries
    /// strictly increase, bracket every instant, and are never more than
    /// two days apart.
    ///
    /// A correctness test, run in the normal suite. To keep it affordable
    /// in a debug build, zones whose rules are identical over the range
    /// (aliases such as `US/Eastern` and `America/New_York`, and the many
    /// zones that share their offsets and transitions) are checked once:
    /// the boundaries depend only on the offsets in force, never on the
    /// zone's name, so a second identical zone cannot fail where the first
    /// passed.
    #[test]
    fn every_zone_every_transition() {
        let db = TimeZoneDatabase::bundled();
        let from = at("1970-01-01T00:00:00Z");
        let until = at("2040-01-01T00:00:00Z");
        let mut seen = std::collections::HashSet::new();
        let mut zones: Vec<(String, Vec<i64>)> = Vec::new();
        for name in db.available() {
            let name = name.to_string();
            let tz = db.get(&name).unwrap();
            let transitions: Vec<i64> = tz
                .following(Timestamp::from_second(from).unwrap())
                .map(|t| t.timestamp().as_second())
                .take_while(|&t| t < until)
                .collect();
            // The zone's behaviour over the range: the offset before the
            // first transition (and before the checked window), then each
            // transition with the offset it brings.
            let offset = |t: i64| tz.to_offset(Timestamp::from_second(t).unwrap()).seconds();
            let rules: Vec<(i64, i32)> = std::iter::once((i64::MIN, offset(from - 3 * DAY)))
                .chain(transitions.iter().map(|&t| (t, offset(t))))
                .chain(std::iter::once((i64::MAX, offset(until + 3 * DAY))))
                .collect();
            if seen.insert(rules) {
                zones.push((name, transitions));
            }
        }
        // The zones are independent: spread them over the CPUs.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::thread::scope(|scope| {
            for chunk in zones.chunks(zones.len().div_ceil(threads).max(1)) {
                scope.spawn(move || {
                    for (name, transitions) in chunk {
                        for q in 0..48 {
                            let d = dt(&format!("{:02}:{:02} {name}", q / 2, q % 2 * 30));
                            for &tr in transitions {
                                let mut b = d.boundary_at_or_before(tr - 2 * DAY);
                                while b < tr + 2 * DAY {
                                    let a = d.boundary_after(b);
                                    assert!(a > b && a - b <= 2 * DAY, "{d}: {b} -> {a}");
                                    assert_eq!(d.boundary_at_or_before(a - 1), b, "{d}: {a}");
                                    assert_eq!(d.boundary_at_or_before(a), a, "{d}: {a}");
                                    assert_eq!(d.boundary_after((a + b) / 2), a, "{d}: {b}");
                                    b = a;
                                }
                            }
                        }
                    }
                });
            }
        });
        let zones = zones.len();
        // The bundled database has hundreds of distinct zones; far fewer
        // means the de-duplication above went wrong.
        assert!(zones > 200, "only {zones} distinct zones checked");
    }

    // ---- when a digest is due ----

    #[test]
    fn idle_three_days_gives_one_window() {
        let d = dt("07:00 Europe/Paris");
        // Across the spring change: 03-27, 03-28, 03-29 (23 hours), 03-30.
        let last = at("2026-03-27T06:00:00Z");
        let now = at("2026-03-30T10:00:00Z");
        let end = at("2026-03-30T05:00:00Z");
        assert_eq!(
            d.digest_due(Some(last), now),
            DigestDue::Due {
                window_start: last,
                window_end: end
            }
        );
        assert_eq!(end - last, 3 * DAY - HOUR);
        // Stored, nothing more until tomorrow 07:00.
        assert_eq!(
            d.digest_due(Some(end), now),
            DigestDue::NotUntil(at("2026-03-31T05:00:00Z"))
        );
    }

    #[test]
    fn due_exactly_when_the_boundary_passes() {
        let d = DigestTime::default();
        let last = at("2026-05-01T12:00:00Z");
        let b = at("2026-05-02T12:00:00Z");
        assert_eq!(d.digest_due(Some(last), last), DigestDue::NotUntil(b));
        assert_eq!(d.digest_due(Some(last), b - 1), DigestDue::NotUntil(b));
        assert_eq!(
            d.digest_due(Some(last), b),
            DigestDue::Due {
                window_start: last,
                window_end: b
            }
        );
        assert_eq!(d.digest_due(Some(b), b), DigestDue::NotUntil(b + DAY));
        assert_eq!(
            d.digest_due(Some(last), b - 1).task_due(),
            backoffice::Due::At(b)
        );
        assert_eq!(d.digest_due(Some(last), b).task_due(), backoffice::Due::Now);
    }

    #[test]
    fn fresh_repository_gets_the_last_digest_day_only() {
        let d = dt("07:00 Europe/Paris");
        // 08:00 CEST on the day of the change: the last day is 23 hours.
        let now = at("2026-03-29T06:00:00Z");
        let end = at("2026-03-29T05:00:00Z");
        let start = at("2026-03-28T06:00:00Z");
        assert_eq!(
            d.digest_due(None, now),
            DigestDue::Due {
                window_start: start,
                window_end: end
            }
        );
        assert_eq!(d.digest_due(Some(end), now), DigestDue::NotUntil(end + DAY));
        // Just before 07:00: the day before yesterday to yesterday.
        assert_eq!(
            d.digest_due(None, end - 1),
            DigestDue::Due {
                window_start: at("2026-03-27T06:00:00Z"),
                window_end: start
            }
        );
    }

    #[test]
    fn clock_stepped_back_a_little_waits_for_the_next_boundary() {
        let d = DigestTime::default();
        let b = at("2026-05-02T12:00:00Z");
        // Sent at 12:00:01, then NTP steps the clock back 5 seconds.
        let now = b - 4;
        let next = b + DAY;
        assert_eq!(d.digest_due(Some(b), now), DigestDue::NotUntil(next));
        // Back a whole day: still at most the next boundary by this clock.
        assert_eq!(
            d.digest_due(Some(b), b - DAY + 10),
            DigestDue::NotUntil(next)
        );
        // No second digest of the day already sent; the next one follows.
        assert_eq!(
            d.digest_due(Some(b), next),
            DigestDue::Due {
                window_start: b,
                window_end: next
            }
        );
    }

    #[test]
    fn clock_stepped_back_far_resets_instead_of_stalling() {
        let d = dt("07:00 America/New_York");
        // `last` written by a clock a year fast; the clock is now right.
        let last = at("2027-06-01T11:00:00Z");
        let now = at("2026-06-01T15:00:00Z");
        let reset = at("2026-06-01T11:00:00Z");
        let next = at("2026-06-02T11:00:00Z");
        assert_eq!(
            d.digest_due(Some(last), now),
            DigestDue::ClockBehind { reset_to: reset }
        );
        assert_eq!(
            d.digest_due(Some(last), now).task_due(),
            backoffice::Due::Now
        );
        // After the task stores it, the schedule runs normally.
        assert_eq!(d.digest_due(Some(reset), now), DigestDue::NotUntil(next));
        assert_eq!(
            d.digest_due(Some(reset), next + 60),
            DigestDue::Due {
                window_start: reset,
                window_end: next
            }
        );
    }

    #[test]
    fn changing_the_setting_skips_and_repeats_nothing() {
        let old = DigestTime::default();
        let new = dt("07:00 Europe/Paris");
        let last = old.boundary_at_or_before(at("2026-06-10T13:00:00Z")); // 06-10 12:00Z
        // Next morning at 08:00 Paris: from 12:00Z yesterday to 05:00Z today.
        assert_eq!(
            new.digest_due(Some(last), at("2026-06-11T06:00:00Z")),
            DigestDue::Due {
                window_start: last,
                window_end: at("2026-06-11T05:00:00Z")
            }
        );
        // At 10:00Z the same day, before any new boundary: wait for it.
        assert_eq!(
            new.digest_due(Some(last), at("2026-06-10T13:00:00Z")),
            DigestDue::NotUntil(at("2026-06-11T05:00:00Z"))
        );
    }

    // ---- properties ----

    /// Instants of 2026's transitions in the test zones, so that random
    /// times land near them often.
    const TRANSITIONS: [&str; 6] = [
        "2026-03-08T07:00:00Z",
        "2026-03-29T01:00:00Z",
        "2026-04-04T15:00:00Z",
        "2026-10-03T15:30:00Z",
        "2026-10-25T01:00:00Z",
        "2026-11-01T06:00:00Z",
    ];

    fn digest_time() -> impl Strategy<Value = DigestTime> {
        (0..ZONES.len(), 0..24i8, 0..60i8).prop_map(|(z, h, m)| {
            DigestTime::parse(&format!("{h:02}:{m:02} {}", ZONES[z])).unwrap()
        })
    }

    /// A time in 1970-2100, or within three days of a 2026 transition.
    fn instant() -> impl Strategy<Value = i64> {
        prop_oneof![
            0..at("2100-01-01T00:00:00Z"),
            (0..TRANSITIONS.len(), -3 * DAY..3 * DAY).prop_map(|(i, d)| at(TRANSITIONS[i]) + d),
        ]
    }

    proptest! {
        #[test]
        fn boundaries_bracket_every_instant(d in digest_time(), t in instant()) {
            let before = d.boundary_at_or_before(t);
            let after = d.boundary_after(t);
            prop_assert!(before <= t && t < after);
            prop_assert!(d.boundary_after(before) > t);
            // Nothing in between: the two are consecutive boundaries.
            prop_assert_eq!(d.boundary_after(before), after);
            prop_assert_eq!(d.boundary_at_or_before(after - 1), before);
            prop_assert_eq!(d.boundary_at_or_before(after), after);
        }

        #[test]
        fn consecutive_boundaries_are_a_day_apart(d in digest_time(), t in instant()) {
            let b = d.boundary_at_or_before(t);
            let next = d.boundary_after(b);
            let (lo, hi) = spacing(&d);
            prop_assert!((lo..=hi).contains(&(next - b)), "{} -> {}", b, next);
            let tz = d.time_zone();
            let day = |t: i64| tz.to_datetime(Timestamp::from_second(t).unwrap()).date();
            prop_assert_eq!(day(next), day(b).tomorrow().unwrap());
        }

        /// Checks at random times, handling each answer as the task will:
        /// windows tile time, end at the latest boundary, and never repeat.
        #[test]
        fn windows_tile_without_gaps_or_repeats(
            d in digest_time(),
            start in instant(),
            steps in proptest::collection::vec(0..4 * DAY, 1..30),
        ) {
            let mut last: Option<i64> = None;
            let mut now = start;
            let mut windows = Vec::new();
            for step in steps {
                now += step;
                match d.digest_due(last, now) {
                    DigestDue::Due { window_start, window_end } => {
                        prop_assert_eq!(window_end, d.boundary_at_or_before(now));
                        prop_assert!(window_start < window_end);
                        match last {
                            Some(l) => prop_assert_eq!(window_start, l),
                            None => prop_assert_eq!(d.boundary_after(window_start), window_end),
                        }
                        windows.push((window_start, window_end));
                        last = Some(window_end);
                    }
                    DigestDue::NotUntil(n) => {
                        prop_assert!(last.is_some());
                        prop_assert_eq!(n, d.boundary_after(now));
                        // No boundary passed unhandled.
                        prop_assert_eq!(last, Some(d.boundary_at_or_before(now)));
                    }
                    DigestDue::ClockBehind { .. } => prop_assert!(false, "the clock never went back"),
                }
                prop_assert_eq!(last, Some(d.boundary_at_or_before(now)));
            }
            for w in windows.windows(2) {
                prop_assert_eq!(w[0].1, w[1].0);
            }
        }

        /// `NotUntil(n)` is exact: at `n` the digest is due.
        #[test]
        fn not_until_is_when_it_becomes_due(d in digest_time(), last in instant(), ahead in 0..3 * DAY) {
            let last = d.boundary_at_or_before(last);
            let now = last + ahead;
            if let DigestDue::NotUntil(n) = d.digest_due(Some(last), now) {
                prop_assert!(n > now);
                prop_assert_eq!(d.digest_due(Some(last), n - 1), DigestDue::NotUntil(n));
                prop_assert_eq!(
                    d.digest_due(Some(last), n),
                    DigestDue::Due { window_start: last, window_end: n }
                );
            }
        }

        /// With `last` after `now`: never a window, and digests resume
        /// within about two days by the current clock, however far back
        /// it went.
        #[test]
        fn clock_stepped_back_neither_sends_nor_stalls(
            d in digest_time(),
            now in instant(),
            back in 1..20 * 365 * DAY,
        ) {
            let last = now + back;
            let limit = d.boundary_after(d.boundary_after(now));
            match d.digest_due(Some(last), now) {
                DigestDue::Due { .. } => prop_assert!(false, "a window with last > now"),
                DigestDue::NotUntil(n) => {
                    prop_assert!(n > last && n <= limit);
                    prop_assert_eq!(
                        d.digest_due(Some(last), n),
                        DigestDue::Due { window_start: last, window_end: n }
                    );
                }
                DigestDue::ClockBehind { reset_to } => {
                    prop_assert!(last > d.boundary_after(now));
                    prop_assert_eq!(reset_to, d.boundary_at_or_before(now));
                    let next = d.boundary_after(now);
                    prop_assert_eq!(d.digest_due(Some(reset_to), now), DigestDue::NotUntil(next));
                    prop_assert_eq!(
                        d.digest_due(Some(reset_to), next),
                        DigestDue::Due { window_start: reset_to, window_end: next }
                    );
                }
            }
        }
    }
}
