//! Wall-clock time, in the units the lease uses (Unix seconds), and the
//! human forms `status` and the run log print.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The current Unix time in whole seconds.
pub fn now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // A clock before 1970 is broken; treat it as the epoch rather than panic.
        Err(_) => 0,
    }
}

/// How long until the wall clock reaches the start of second `t`
/// (zero if it already has).
pub fn until(t: i64) -> Duration {
    // A time too far ahead for the system clock's type is "a very long
    // time"; callers bound their sleeps anyway.
    let Some(target) = UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(t).unwrap_or(0)))
    else {
        return Duration::MAX;
    };
    target
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, the run log's timestamp format.
///
/// Times before 1970 or after 9999 print as `@SECONDS`.
pub fn format_utc(t: i64) -> String {
    // 9999-12-31 23:59:59 UTC: beyond it the year has five digits.
    const LAST: i64 = 253_402_300_799;
    if !(0..=LAST).contains(&t) {
        return format!("@{t}");
    }
    let (days, secs) = (t / 86_400, t % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`), for days from 0 on. The engine keeps no
/// calendar library for this one conversion.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// "moments ago", "3 minutes ago", "in 53 seconds", "in 2 hours": how a
/// person says a time relative to now.
///
/// The near future is counted in seconds: it is what someone waits for (a
/// lease ending, a retry), and "in a few seconds" does not say whether to
/// wait or come back. The near past stays "moments ago".
pub fn relative(t: i64, now: i64) -> String {
    let d = now.saturating_sub(t);
    if d.unsigned_abs() < 60 {
        return match d {
            0.. => "moments ago".into(),
            -1 => "in 1 second".into(),
            _ => format!("in {} seconds", d.unsigned_abs()),
        };
    }
    let a = d.unsigned_abs();
    let (n, unit) = if a < 3600 {
        (a / 60, "minute")
    } else if a < 86_400 {
        (a / 3600, "hour")
    } else {
        (a / 86_400, "day")
    };
    let s = if n == 1 { "" } else { "s" };
    if d > 0 {
        format!("{n} {unit}{s} ago")
    } else {
        format!("in {n} {unit}{s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative(100, 130), "moments ago");
        assert_eq!(relative(100, 100 + 180), "3 minutes ago");
        assert_eq!(relative(100, 100 + 60), "1 minute ago");
        assert_eq!(relative(100 + 7200, 100), "in 2 hours");
        assert_eq!(relative(0, 3 * 86_400), "3 days ago");
        assert_eq!(relative(100 + 53, 100), "in 53 seconds");
        assert_eq!(relative(101, 100), "in 1 second");
        assert_eq!(relative(100 + 59, 100), "in 59 seconds");
        assert_eq!(relative(100 + 60, 100), "in 1 minute");
        assert_eq!(relative(100, 100), "moments ago");
    }

    #[test]
    fn extreme_times_never_panic() {
        for t in [i64::MIN, -1, 0, i64::MAX] {
            for now in [i64::MIN, 0, i64::MAX] {
                let _ = relative(t, now);
            }
            let _ = until(t);
            let _ = format_utc(t);
        }
        assert_eq!(until(i64::MIN), Duration::ZERO);
    }

    #[test]
    fn utc_format_is_fossils() {
        assert_eq!(format_utc(1_795_261_729), "2026-11-21 11:48:49");
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_utc(253_402_300_799), "9999-12-31 23:59:59");
        assert_eq!(format_utc(253_402_300_800), "@253402300800");
        assert_eq!(format_utc(-1), "@-1");
    }

    /// Every day from 1970 to 9999 against a calendar counted day by day.
    #[test]
    fn civil_dates_match_a_day_by_day_count() {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for days in 0..2_932_897 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let len = match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                (d, m) = (1, m + 1);
                if m > 12 {
                    (m, y) = (1, y + 1);
                }
            }
        }
        assert_eq!((y, m, d), (10_000, 1, 1));
    }
}
