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
pub fn format_utc(t: i64) -> String {
    match jiff::Timestamp::from_second(t) {
        Ok(ts) => ts.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => format!("@{t}"),
    }
}

/// "moments ago", "3 minutes ago", "in 2 hours": how a person says a time
/// relative to now.
pub fn relative(t: i64, now: i64) -> String {
    let d = now.saturating_sub(t);
    if d.unsigned_abs() < 60 {
        return if d >= 0 {
            "moments ago".into()
        } else {
            "in a few seconds".into()
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
    }
}
