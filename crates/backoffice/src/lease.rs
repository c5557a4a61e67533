//! The lease value and its text codec.
//!
//! The lease lives in the repository's `config` table, row `backoffice`, as
//! text Fossil can read and write:
//!
//! ```text
//! ID_CUR TM_CUR ID_NEXT TM_NEXT [cur-start=S] [next-start=S] [boot=B]
//! ```
//!
//! The first four fields are decimal integers exactly as Fossil writes them:
//! the pid of the *current* holder (the worker doing the work) and the Unix
//! time its lease expires, then the pid of the *on-deck* worker (queued
//! behind it, asleep) and the time its slot expires. A pid of 0 means "no
//! holder".
//!
//! Fossil's reader stops after four integers, so we append `key=value`
//! extension fields that make liveness safe against pid reuse: each holder's
//! process start time (`/proc/PID/stat` field 22, clock ticks since boot) and
//! the boot id of the machine that wrote the lease. A lease written by Fossil
//! simply has none, and [`crate::process`] then falls back to a weaker rule.
//!
//! Parsing is total: any text yields a [`Lease`] and never panics. Fields
//! that do not parse read as 0 ("no holder", "expired long ago"), which is
//! the safe reading: the next worker takes over and rewrites the row.

/// One slot of the lease: the current holder or the on-deck worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// Process id of the holder; 0 (or negative) means nobody.
    pub pid: i64,
    /// Unix time, in seconds, at which this slot expires.
    pub expires: i64,
    /// The holder's process start time in clock ticks since boot, when the
    /// writer recorded it (we always do; Fossil never does).
    pub start: Option<u64>,
}

impl Slot {
    /// An empty slot: nobody, expired at the epoch.
    pub const EMPTY: Slot = Slot {
        pid: 0,
        expires: 0,
        start: None,
    };

    /// True if the slot names a process at all.
    pub fn is_held(&self) -> bool {
        self.pid > 0
    }
}

/// The decoded lease: who works now, who waits on deck.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// The worker that holds the lease and does (or did) the work.
    pub current: Slot,
    /// The worker queued behind it, sleeping until the current lease ends.
    pub next: Slot,
    /// The boot id of the machine that last wrote the lease, if recorded.
    pub boot: Option<String>,
}

/// Longest boot id we keep; Linux's is a 36-character UUID.
const MAX_BOOT_LEN: usize = 64;

impl Lease {
    /// Decodes a stored lease value. Total: never fails, never panics.
    pub fn parse(text: &str) -> Lease {
        Self::parse_report(text).0
    }

    /// Decodes a stored lease value and says whether it was well formed.
    ///
    /// The second value is `None` for a clean value (including the empty
    /// string, which is what a fresh repository has) and otherwise a short
    /// description of the first problem, for `backoffice lease` and `status`.
    pub fn parse_report(text: &str) -> (Lease, Option<String>) {
        let mut problem: Option<String> = None;
        let mut note = |p: String| {
            if problem.is_none() {
                problem = Some(p);
            }
        };
        let mut tokens = text.split_ascii_whitespace();
        let mut ints = [0i64; 4];
        let mut found = 0;
        for (i, slot) in ints.iter_mut().enumerate() {
            match tokens.next() {
                Some(tok) => match tok.parse::<i64>() {
                    Ok(v) => {
                        *slot = v;
                        found += 1;
                    }
                    Err(_) => note(format!(
                        "field {} is not an integer: {:?}",
                        i + 1,
                        clip(tok)
                    )),
                },
                None => break,
            }
        }
        if found > 0 && found < 4 {
            // `note` keeps only the first problem, so a bad field wins.
            note(format!("only {found} of 4 fields"));
        }
        let mut lease = Lease {
            current: Slot {
                pid: ints[0],
                expires: ints[1],
                start: None,
            },
            next: Slot {
                pid: ints[2],
                expires: ints[3],
                start: None,
            },
            boot: None,
        };
        for tok in tokens {
            let Some((key, value)) = tok.split_once('=') else {
                note(format!("unexpected extra field {:?}", clip(tok)));
                continue;
            };
            match key {
                "cur-start" => match value.parse::<u64>() {
                    Ok(v) => lease.current.start = Some(v),
                    Err(_) => note(format!("bad cur-start {:?}", clip(value))),
                },
                "next-start" => match value.parse::<u64>() {
                    Ok(v) => lease.next.start = Some(v),
                    Err(_) => note(format!("bad next-start {:?}", clip(value))),
                },
                "boot" if is_boot_id(value) => lease.boot = Some(value.to_owned()),
                "boot" => note(format!("bad boot id {:?}", clip(value))),
                // Unknown keys are ignored so that a newer writer's fields do
                // not make an older reader think the lease is corrupt.
                _ => {}
            }
        }
        (lease, problem)
    }

    /// Encodes the lease for storage: Fossil's four integers, then our
    /// extension fields for whatever is recorded.
    pub fn encode(&self) -> String {
        use std::fmt::Write;
        let mut s = format!(
            "{} {} {} {}",
            self.current.pid, self.current.expires, self.next.pid, self.next.expires
        );
        if let Some(v) = self.current.start {
            let _ = write!(s, " cur-start={v}");
        }
        if let Some(v) = self.next.start {
            let _ = write!(s, " next-start={v}");
        }
        if let Some(b) = self.boot.as_deref().filter(|b| is_boot_id(b)) {
            let _ = write!(s, " boot={b}");
        }
        s
    }
}

/// A boot id is short and made of hex digits and dashes; anything else is
/// refused so an encoded lease always re-parses to the same value.
pub(crate) fn is_boot_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_BOOT_LEN
        && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Shortens a token for an error message (a corrupt row may hold megabytes).
fn clip(s: &str) -> String {
    s.chars().take(24).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fossil_value_round_trips() {
        let l = Lease::parse("2023 1795261729 0 0");
        assert_eq!(l.current.pid, 2023);
        assert_eq!(l.current.expires, 1795261729);
        assert_eq!(l.next, Slot::EMPTY);
        assert_eq!(l.encode(), "2023 1795261729 0 0");
    }

    #[test]
    fn empty_is_clean_and_free() {
        let (l, problem) = Lease::parse_report("");
        assert_eq!(l, Lease::default());
        assert_eq!(problem, None);
    }

    #[test]
    fn extensions_round_trip() {
        let text = "10 20 30 40 cur-start=5 next-start=6 boot=ab-cd";
        let l = Lease::parse(text);
        assert_eq!(l.current.start, Some(5));
        assert_eq!(l.next.start, Some(6));
        assert_eq!(l.boot.as_deref(), Some("ab-cd"));
        assert_eq!(l.encode(), text);
    }

    #[test]
    fn garbage_reads_as_free_and_is_reported() {
        for text in [
            "garbage",
            "1 2 3",
            "-1 x 3 4",
            "99999999999999999999 1 1 1",
            "1 2 3 4 zz",
        ] {
            let (_, problem) = Lease::parse_report(text);
            assert!(problem.is_some(), "{text:?} should be reported");
        }
        let l = Lease::parse("99999999999999999999 1 2 3");
        assert_eq!(l.current.pid, 0, "overflow reads as no holder");
        assert_eq!(l.next.pid, 2);
    }

    #[test]
    fn negative_pids_are_not_holders() {
        let l = Lease::parse("-5 100 -1 100");
        assert!(!l.current.is_held());
        assert!(!l.next.is_held());
    }

    fn slot() -> impl Strategy<Value = Slot> {
        (
            any::<i64>(),
            any::<i64>(),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(pid, expires, start)| Slot {
                pid,
                expires,
                start,
            })
    }

    proptest! {
        /// Parsing any text whatsoever never panics.
        #[test]
        fn parse_is_total(text in ".*") {
            let _ = Lease::parse_report(&text);
        }

        /// Nor does text that looks almost right.
        #[test]
        fn parse_is_total_on_near_misses(
            parts in proptest::collection::vec("(-?[0-9]{0,22}|[a-z-]{1,10}=[0-9a-f-]{0,70}|\\PC{0,4})", 0..9)
        ) {
            let _ = Lease::parse_report(&parts.join(" "));
        }

        /// Whatever we encode decodes to the same lease, cleanly.
        #[test]
        fn encode_then_parse_is_identity(
            current in slot(), next in slot(), boot in proptest::option::of("[0-9a-f-]{1,64}")
        ) {
            let lease = Lease { current, next, boot };
            let text = lease.encode();
            let (back, problem) = Lease::parse_report(&text);
            prop_assert_eq!(problem, None);
            prop_assert_eq!(back, lease);
        }

        /// The first four fields are always exactly what Fossil would read.
        #[test]
        fn fossil_prefix_is_four_integers(current in slot(), next in slot()) {
            let text = Lease { current, next, boot: Some("b".into()) }.encode();
            let ints: Vec<i64> = text.split(' ').take(4).map(|t| t.parse().unwrap()).collect();
            prop_assert_eq!(ints, vec![current.pid, current.expires, next.pid, next.expires]);
        }
    }
}
