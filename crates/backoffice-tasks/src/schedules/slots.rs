//! When a schedule's slots fall: a five-field cron pattern read on a time
//! zone's wall clock, or a plain interval.
//!
//! # The model
//!
//! A **slot** is an instant at which a schedule is due once. Slots strictly
//! increase; a schedule remembers the last slot it ran (or skipped), and
//! the next one is the first slot after it ([`Spec::next_after`]).
//!
//! * `--every 15m`: the slots are the multiples of the interval since the
//!   Unix epoch (00:00, 00:15, … UTC), so every host, and every restart,
//!   agrees on them without storing an anchor.
//! * `--cron "0 3 * * *" --tz Europe/Paris`: the pattern names wall-clock
//!   minutes of the zone (standard five fields, Vixie cron's rules: when
//!   both day fields are restricted, either may match; `@hourly`, `@daily`,
//!   `@weekly`, `@monthly`, `@yearly`). Each matching minute `m` falls at
//!   the **first instant at which the zone's clock reads `m` or later**:
//!
//!   * normally, the instant the clock reads `m`;
//!   * in a **fold** (the clock goes back, so `m` is read twice), the first
//!     time: the slot runs once, never again on the repeated hour;
//!   * in a **gap** (the clock jumps forward over `m`), the instant of the
//!     jump, the next valid instant: `30 2 * * *` in Paris runs at 03:00 on
//!     the morning the clocks spring from 02:00 to 03:00. Several minutes
//!     of one gap (`*/15` skips four) fall on that one instant, which is
//!     one slot: the schedule runs once for them.
//!
//!   That mapping is monotonic (a later minute never falls earlier), which
//!   is what makes "the first slot after the last one" well defined across
//!   folds. It differs on purpose from the digest's rule (a time in a gap
//!   moves by the gap's length, `notify::schedule`): a digest has one
//!   boundary a day, a cron pattern may have many, and moving each by the
//!   gap would put the gap's minutes on top of real ones after it.
//!
//! Time zones come from the IANA database compiled into the binary (jiff's
//! bundled copy), as for the digest, so every host computes the same
//! instants. Patterns are parsed by the `croner` crate, held to exactly
//! five fields (no seconds, no years).

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};

/// A schedule's timing, parsed and checked.
#[derive(Clone, Debug)]
pub enum Spec {
    /// A cron pattern on a zone's wall clock.
    Cron(Box<CronSpec>),
    /// Every so many seconds, counted from the Unix epoch.
    Every {
        /// The interval, at least [`MIN_EVERY_SECS`].
        secs: i64,
    },
}

/// A cron pattern and the zone whose wall clock it reads.
#[derive(Clone, Debug)]
pub struct CronSpec {
    text: String,
    cron: croner::Cron,
    zone: TimeZone,
    zone_name: String,
}

/// The shortest interval. Runs still come at most once per lease time
/// (`backoffice-lease-time`): slots that pass meanwhile are caught up by
/// the schedule's rule.
pub const MIN_EVERY_SECS: i64 = 1;

/// The longest interval accepted by `--every` (a year), so slot arithmetic
/// can never overflow.
pub const MAX_EVERY_SECS: i64 = 366 * 86_400;

/// How far [`Spec::next_after`] looks for the next slot. The rarest valid
/// five-field pattern, February 29th, matches every four years (eight
/// across a century that is not a leap year); past this, none is due.
const HORIZON_YEARS: i16 = 30;

/// Why a schedule's timing was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// Not five fields (or a known `@` nickname).
    #[error(
        "cron pattern {0:?}: expected five fields (minute hour day-of-month month day-of-week) \
         or @hourly, @daily, @weekly, @monthly, @yearly"
    )]
    Fields(String),
    /// The pattern's fields did not parse.
    #[error("cron pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What the parser said.
        reason: String,
    },
    /// A pattern that never matches a real date (`0 0 31 2 *`).
    #[error("cron pattern {0:?} never matches a date")]
    Never(String),
    /// Not a time zone name of the IANA database.
    #[error("unknown time zone {0:?} (use an IANA name such as Europe/Paris or UTC)")]
    Zone(String),
    /// `--every` that does not read as an interval, or out of range.
    #[error(
        "interval {0:?}: expected a number and a unit (s, m, h, d), from 1s to 366d, e.g. 15m or 1h"
    )]
    Interval(String),
}

/// The nicknames and what they stand for.
const NICKNAMES: &[(&str, &str)] = &[
    ("@hourly", "0 * * * *"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"),
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
];

impl Spec {
    /// A cron pattern on the wall clock of `zone` (default UTC).
    pub fn cron(pattern: &str, zone: Option<&str>) -> Result<Spec, SpecError> {
        let text = pattern.split_whitespace().collect::<Vec<_>>().join(" ");
        let fields = match NICKNAMES
            .iter()
            .find(|(nick, _)| nick.eq_ignore_ascii_case(&text))
        {
            Some((_, fields)) => (*fields).to_string(),
            None if text.starts_with('@') => return Err(SpecError::Fields(text)),
            None if text.split(' ').count() != 5 => return Err(SpecError::Fields(text)),
            None => text.clone(),
        };
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(&fields)
            .map_err(|e| SpecError::Pattern {
                pattern: text.clone(),
                reason: e.to_string(),
            })?;
        let zone_name = zone.unwrap_or("UTC");
        let zone = jiff::tz::db()
            .get(zone_name)
            .map_err(|_| SpecError::Zone(zone_name.to_string()))?;
        let zone_name = zone.iana_name().unwrap_or(zone_name).to_string();
        let spec = CronSpec {
            text,
            cron,
            zone,
            zone_name,
        };
        // A pattern such as February 30th parses but never matches.
        if spec
            .next_minute(DateTime::constant(2000, 1, 1, 0, 0, 0, 0))
            .is_none()
        {
            return Err(SpecError::Never(spec.text));
        }
        Ok(Spec::Cron(Box::new(spec)))
    }

    /// `15m`, `1h`, `90s`, `2d`: a plain interval.
    pub fn every(text: &str) -> Result<Spec, SpecError> {
        let bad = || SpecError::Interval(text.to_string());
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = t.split_at(split);
        let n: i64 = n.parse().map_err(|_| bad())?;
        let unit_secs = match unit.trim() {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            _ => return Err(bad()),
        };
        let secs = n.checked_mul(unit_secs).ok_or_else(bad)?;
        if !(MIN_EVERY_SECS..=MAX_EVERY_SECS).contains(&secs) {
            return Err(bad());
        }
        Ok(Spec::Every { secs })
    }

    /// How the timing reads back: `cron "0 3 * * *" Europe/Paris` or
    /// `every 15m`.
    pub fn describe(&self) -> String {
        match self {
            Spec::Cron(c) => format!("cron \"{}\" {}", c.text, c.zone_name),
            Spec::Every { secs } => format!("every {}", interval_text(*secs)),
        }
    }

    /// The first slot strictly after `after`; `None` when there is none
    /// within the horizon (a pattern that matches only in a distant year).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match self {
            Spec::Every { secs } => {
                let k = after.as_second().div_euclid(*secs).checked_add(1)?;
                Timestamp::from_second(k.checked_mul(*secs)?).ok()
            }
            Spec::Cron(c) => c.next_after(after),
        }
    }

    /// The slots in `(after, now]`: the latest of them and how many there
    /// are, counted up to `cap` (a schedule idle for years has a great
    /// many; past `cap` the count says "at least").
    pub fn passed(&self, after: Timestamp, now: Timestamp, cap: u32) -> Passed {
        let mut passed = Passed::default();
        let mut at = after;
        while let Some(next) = self.next_after(at).filter(|&n| n <= now) {
            passed.latest = Some(next);
            passed.count += 1;
            if passed.count >= cap {
                passed.capped = true;
                // The latest slot is still exact: jump to it.
                passed.latest = self.latest_at_or_before(now).or(passed.latest);
                break;
            }
            at = next;
        }
        passed
    }

    /// The latest slot at or before `now`.
    pub fn latest_at_or_before(&self, now: Timestamp) -> Option<Timestamp> {
        match self {
            Spec::Every { secs } => {
                let k = now.as_second().div_euclid(*secs);
                Timestamp::from_second(k.checked_mul(*secs)?).ok()
            }
            Spec::Cron(c) => c.latest_at_or_before(now),
        }
    }
}

/// What [`Spec::passed`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Passed {
    /// The latest slot in the range.
    pub latest: Option<Timestamp>,
    /// How many slots, up to the cap.
    pub count: u32,
    /// True when there were at least `count`.
    pub capped: bool,
}

impl CronSpec {
    /// The zone's canonical name.
    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }

    /// The first matching wall-clock minute strictly after `dt`.
    fn next_minute(&self, dt: DateTime) -> Option<DateTime> {
        let found = self.cron.find_next_occurrence(&dt, false).ok()?;
        let horizon = dt.year().saturating_add(HORIZON_YEARS);
        (found.year() <= horizon).then_some(found)
    }

    /// The first instant at which the zone's clock reads `m` or later.
    fn instant_of(&self, m: DateTime) -> Option<Timestamp> {
        let amb = self.zone.to_ambiguous_timestamp(m);
        match amb.offset() {
            AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(m).ok(),
            AmbiguousOffset::Fold { before, after } => {
                let a = before.to_timestamp(m).ok()?;
                let b = after.to_timestamp(m).ok()?;
                Some(a.min(b))
            }
            AmbiguousOffset::Gap { after, .. } => {
                // Read with the offset after the jump, `m` lies before the
                // jump; the first transition after that is the jump itself.
                let early = after.to_timestamp(m).ok()?;
                let jump = self.zone.following(early).next()?;
                Some(jump.timestamp())
            }
        }
    }

    fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        // A minute at or before the clock's reading at `after` falls at or
        // before `after`; so start from that reading. Past a fold the
        // clock reads the repeated hour again, whose minutes fell in its
        // first pass: skip them (bounded: a fold is hours, not years).
        let mut m = self.zone.to_datetime(after);
        for _ in 0..100_000 {
            m = self.next_minute(m)?;
            let at = self.instant_of(m)?;
            if at > after {
                return Some(at);
            }
        }
        None
    }

    fn latest_at_or_before(&self, now: Timestamp) -> Option<Timestamp> {
        // The latest matching minute at or before the clock's reading, then
        // forward while the next one has fallen too (after a fold the
        // reading is behind the latest minute already passed).
        let reading = self.zone.to_datetime(now);
        let mut m = self.cron.find_previous_occurrence(&reading, true).ok()?;
        let mut latest = self.instant_of(m)?;
        for _ in 0..100_000 {
            let Some(next) = self.next_minute(m) else {
                break;
            };
            match self.instant_of(next) {
                Some(at) if at <= now => {
                    latest = at;
                    m = next;
                }
                _ => break,
            }
        }
        Some(latest)
    }
}

/// `900` → `15m`; the largest whole unit.
pub fn interval_text(secs: i64) -> String {
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs % n == 0 {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cron(p: &str, z: &str) -> Spec {
        Spec::cron(p, Some(z)).unwrap()
    }

    #[test]
    fn bad_timings_are_named() {
        assert!(matches!(
            Spec::cron("0 3 * *", None),
            Err(SpecError::Fields(_))
        ));
        assert!(matches!(
            Spec::cron("0 0 3 * * *", None),
            Err(SpecError::Fields(_))
        ));
        assert!(matches!(
            Spec::cron("@sometimes", None),
            Err(SpecError::Fields(_))
        ));
        assert!(matches!(
            Spec::cron("61 * * * *", None),
            Err(SpecError::Pattern { .. })
        ));
        assert!(matches!(
            Spec::cron("0 0 31 2 *", None),
            Err(SpecError::Never(_))
        ));
        assert!(matches!(
            Spec::cron("0 3 * * *", Some("Mars/Olympus")),
            Err(SpecError::Zone(_))
        ));
        for bad in [
            "",
            "15",
            "m",
            "0m",
            "0s",
            "15 parsecs",
            "-5m",
            "400d",
            "99999999999999999999d",
        ] {
            assert!(
                matches!(Spec::every(bad), Err(SpecError::Interval(_))),
                "{bad:?}"
            );
        }
        let e = Spec::cron("0 3 * *", None).unwrap_err().to_string();
        assert!(e.contains("five fields"), "{e}");
    }

    #[test]
    fn timings_read_back() {
        assert_eq!(
            cron("0  3 * * *", "europe/paris").describe(),
            "cron \"0 3 * * *\" Europe/Paris"
        );
        assert_eq!(
            Spec::cron("@daily", None).unwrap().describe(),
            "cron \"@daily\" UTC"
        );
        assert_eq!(Spec::every("15m").unwrap().describe(), "every 15m");
        assert_eq!(Spec::every("90 s").unwrap().describe(), "every 90s");
        assert_eq!(Spec::every("2d").unwrap().describe(), "every 2d");
    }

    #[test]
    fn intervals_count_from_the_epoch() {
        let s = Spec::every("15m").unwrap();
        assert_eq!(
            s.next_after(ts("2026-12-02T10:07:00Z")),
            Some(ts("2026-12-02T10:15:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-12-02T10:15:00Z")),
            Some(ts("2026-12-02T10:30:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(ts("2026-12-02T10:15:00Z")),
            Some(ts("2026-12-02T10:15:00Z"))
        );
    }

    #[test]
    fn a_daily_slot_in_a_gap_runs_at_the_jump_and_in_a_fold_once() {
        let s = cron("30 2 * * *", "Europe/Paris");
        // 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00Z).
        assert_eq!(
            s.next_after(ts("2026-03-28T12:00:00Z")),
            Some(ts("2026-03-29T01:00:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-03-29T01:00:00Z")),
            Some(ts("2026-03-30T00:30:00Z"))
        );
        // 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00Z); 02:30 is read
        // at 00:30Z and again at 01:30Z: the first only.
        assert_eq!(
            s.next_after(ts("2026-10-24T12:00:00Z")),
            Some(ts("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-10-25T00:30:00Z")),
            Some(ts("2026-10-26T01:30:00Z"))
        );
        // During the repeated hour, nothing more is due today.
        assert_eq!(
            s.latest_at_or_before(ts("2026-10-25T01:45:00Z")),
            Some(ts("2026-10-25T00:30:00Z"))
        );
    }

    #[test]
    fn the_minutes_of_a_gap_are_one_slot_and_a_fold_is_not_run_twice() {
        let s = cron("*/15 * * * *", "Europe/Paris");
        // 01:45 CET (00:45Z), then 02:00..02:45 do not exist: one slot at
        // the jump (01:00Z, 03:00 CEST), then 03:15 CEST.
        let mut at = ts("2026-03-29T00:45:00Z");
        let mut got = vec![];
        for _ in 0..3 {
            at = s.next_after(at).unwrap();
            got.push(at);
        }
        assert_eq!(
            got,
            [
                ts("2026-03-29T01:00:00Z"),
                ts("2026-03-29T01:15:00Z"),
                ts("2026-03-29T01:30:00Z")
            ]
        );
        // Fall back: 02:45 CEST (00:45Z), then the clock reads 02:00 again
        // at 01:00Z; 02:00..02:45 ran in the first pass, so the next slot is
        // 03:00 CET (02:00Z).
        assert_eq!(
            s.next_after(ts("2026-10-25T00:45:00Z")),
            Some(ts("2026-10-25T02:00:00Z"))
        );
        let p = s.passed(ts("2026-10-25T00:00:00Z"), ts("2026-10-25T02:00:00Z"), 100);
        // After 02:00 CEST (00:00Z): 02:15, 02:30, 02:45 CEST, then 03:00 CET.
        assert_eq!((p.count, p.latest), (4, Some(ts("2026-10-25T02:00:00Z"))));
    }

    #[test]
    fn passed_slots_are_counted_up_to_the_cap_and_the_latest_is_exact() {
        let s = cron("0 * * * *", "UTC");
        let p = s.passed(ts("2026-12-01T00:00:00Z"), ts("2026-12-04T00:30:00Z"), 1000);
        assert_eq!(
            (p.count, p.capped, p.latest),
            (72, false, Some(ts("2026-12-04T00:00:00Z")))
        );
        let p = s.passed(ts("2026-12-01T00:00:00Z"), ts("2026-12-04T00:30:00Z"), 10);
        assert_eq!(
            (p.count, p.capped, p.latest),
            (10, true, Some(ts("2026-12-04T00:00:00Z")))
        );
        let p = s.passed(ts("2026-12-01T00:00:00Z"), ts("2026-12-01T00:30:00Z"), 10);
        assert_eq!(p, Passed::default());
    }

    /// Patterns built from parts whose meaning the oracle knows without
    /// the parser: minutes and hours as `*`, `*/k`, `a`, `a-b` or `a,b`;
    /// weekdays as `*` or `1-5`.
    #[derive(Clone, Debug)]
    struct Gen {
        minute: (String, Vec<u8>),
        hour: (String, Vec<u8>),
        weekdays: bool,
    }

    fn field(max: u8) -> impl Strategy<Value = (String, Vec<u8>)> {
        prop_oneof![
            Just(("*".to_string(), (0..max).collect())),
            (2..max / 2)
                .prop_map(move |k| (format!("*/{k}"), (0..max).step_by(k as usize).collect())),
            (0..max).prop_map(|a| (a.to_string(), vec![a])),
            (0..max, 0..max).prop_map(|(a, b)| {
                let (a, b) = (a.min(b), a.max(b));
                (format!("{a}-{b}"), (a..=b).collect())
            }),
            (0..max, 0..max).prop_map(|(a, b)| (format!("{a},{b}"), vec![a, b])),
        ]
    }

    fn patterns() -> impl Strategy<Value = Gen> {
        (field(60), field(24), any::<bool>()).prop_map(|(minute, hour, weekdays)| Gen {
            minute,
            hour,
            weekdays,
        })
    }

    impl Gen {
        fn pattern(&self) -> String {
            let dow = if self.weekdays { "1-5" } else { "*" };
            format!("{} {} * * {dow}", self.minute.0, self.hour.0)
        }

        fn matches(&self, m: DateTime) -> bool {
            let wd = m.weekday().to_monday_one_offset();
            self.minute.1.contains(&(m.minute() as u8))
                && self.hour.1.contains(&(m.hour() as u8))
                && (!self.weekdays || wd <= 5)
        }
    }

    const ZONES: &[&str] = &[
        "Europe/Paris",
        "America/New_York",
        "Australia/Lord_Howe",
        "America/Santiago",
        "Pacific/Chatham",
        "Asia/Kolkata",
        "America/Nuuk",
        "UTC",
    ];

    /// The oracle: scan the instants minute by minute. The slots falling
    /// at instant `t` are the matching minutes `m` the clock reaches for
    /// the first time at `t`: above the highest reading so far, up to the
    /// reading at `t`.
    fn scan(g: &Gen, zone: &TimeZone, after: Timestamp, limit_minutes: i64) -> Option<Timestamp> {
        let minute = SignedDuration::from_secs(60);
        // The highest reading so far: from a day before (longer than any fold).
        let mut t = after - SignedDuration::from_hours(26);
        let mut high = zone.to_datetime(t);
        while t < after {
            t += minute;
            high = high.max(zone.to_datetime(t));
        }
        let start = Timestamp::from_second(after.as_second().div_euclid(60) * 60).unwrap();
        let mut t = start;
        for _ in 0..limit_minutes {
            t += minute;
            let reading = zone.to_datetime(t);
            if reading > high {
                // Every minute in (high, reading] is reached now.
                let mut m = high.with().second(0).subsec_nanosecond(0).build().unwrap()
                    + SignedDuration::from_secs(60);
                while m <= reading {
                    if g.matches(m) && t > after {
                        return Some(t);
                    }
                    m += SignedDuration::from_secs(60);
                }
                high = reading;
            }
        }
        None
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The next slot agrees with a brute-force minute scan, in zones
        /// with gaps and folds of an hour, 30 minutes (Lord Howe), 45
        /// minutes off the hour (Chatham), across midnight (Nuuk), and
        /// around each zone's transitions.
        #[test]
        fn the_next_slot_matches_a_minute_scan(
            g in patterns(),
            zi in 0..ZONES.len(),
            near_transition in any::<bool>(),
            day in 0i64..(365 * 10),
            offset_min in -300i64..300,
            sec in 0i64..60,
        ) {
            let zone = jiff::tz::db().get(ZONES[zi]).unwrap();
            let base = ts("2020-01-01T00:00:00Z") + SignedDuration::from_hours(day * 24);
            let mut after = base + SignedDuration::from_secs(offset_min * 60 + sec);
            if near_transition {
                if let Some(tr) = zone.following(base).next() {
                    after = tr.timestamp() + SignedDuration::from_secs(offset_min * 60 + sec);
                }
            }
            let spec = Spec::cron(&g.pattern(), Some(ZONES[zi])).unwrap();
            // Every generated pattern matches at least once in 4 days.
            let want = scan(&g, &zone, after, 4 * 24 * 60 + 180);
            prop_assert!(want.is_some(), "the scan found nothing for {}", g.pattern());
            prop_assert_eq!(spec.next_after(after), want, "{} in {} after {}", g.pattern(), ZONES[zi], after);
        }
    }
}
