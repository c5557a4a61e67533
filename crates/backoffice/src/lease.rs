//! The lease value and its text codec.
//!
//! The lease lives in the repository's `config` table, row `backoffice`, as
//! text Fossil can read and write:
//!
//! ```text
//! ID_CUR TM_CUR ID_NEXT TM_NEXT [cur-start=S] [cur-ns=N] [cur-alive-until=T]
//!                               [next-start=S] [next-ns=N] [next-alive-until=T] [boot=B]
//!                               [term=K]
//! ```
//!
//! The first four fields are decimal integers exactly as Fossil writes them:
//! the pid of the *current* holder (the worker doing the work) and the Unix
//! time its lease expires, then the pid of the *on-deck* worker (queued
//! behind it, asleep) and the time its slot expires. A pid of 0 means "no
//! holder".
//!
//! Fossil's reader stops after four integers, so we append `key=value`
//! extension fields that make liveness safe against pid reuse and usable
//! across PID namespaces: each holder's process start time (`/proc/PID/stat`
//! field 22, clock ticks since boot), its PID namespace (the inode of
//! `/proc/self/ns/pid`: a pid means nothing outside its namespace), the
//! time until which its heartbeat vouches for it (`alive-until`, Unix
//! seconds, renewed while it works), and the boot id of the machine that
//! wrote the lease. A lease written by Fossil simply has none, and
//! [`crate::process`] then falls back to weaker rules.
//!
//! One field belongs to the lease rather than to a slot: its **fencing
//! term** (`term`), the number of takeovers so far. Each takeover adds one
//! in the transaction that writes the new holder, and nothing else changes
//! it, so a worker that was paused while another took over finds a term
//! other than its own and is refused ([`crate::writes::fenced`]). It is
//! written only when above 0: a lease Fossil wrote (term 0) round-trips
//! byte for byte. Fossil rewrites the row without it (as does `lease
//! --reset`, which deletes it), and the count starts again from 0: a worker
//! of ours paused across that is fenced out, unless as many takeovers as
//! its term happen before it resumes (then the counts meet again), which
//! takes a Fossil worker or a reset *and* more runs during one pause.
//!
//! The four integers are read exactly as Fossil reads them (its
//! `backofficeParseInt`): skip white space (spaces, tabs, newlines), then
//! take decimal digits. No sign, no other character: a field that does not
//! start with a digit reads as 0 and so do the fields after it (Fossil's
//! reader does not move past it). So `+1 …` or `-7 …` is a free lease to
//! Fossil, and to us; `0001` is 1 to both. Both readers must agree on who
//! holds the lease, or each would wait for, or run beside, the other.
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
    /// The holder's PID namespace (inode of `/proc/self/ns/pid`), when
    /// recorded. A checker in another namespace cannot check the pid.
    pub ns: Option<u64>,
    /// Unix time until which the holder's heartbeat vouches for it: a
    /// current holder renews it while it works; an on-deck worker's is its
    /// slot's expiry. Past it, the holder counts as gone.
    pub alive_until: Option<i64>,
}

impl Slot {
    /// An empty slot: nobody, expired at the epoch.
    pub const EMPTY: Slot = Slot {
        pid: 0,
        expires: 0,
        start: None,
        ns: None,
        alive_until: None,
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
    /// The fencing term: how many takeovers this lease has seen (0 when not
    /// recorded, as in a lease Fossil wrote). See the module docs.
    pub term: u64,
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
        // Fossil's reader: four times, skip white space and take digits.
        let mut rest = text;
        let mut ints = [0i64; 4];
        for (i, slot) in ints.iter_mut().enumerate() {
            rest = rest.trim_start_matches(is_fossil_space);
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let (num, after) = rest.split_at(digits);
            if num.is_empty() {
                if rest.is_empty() {
                    // The empty value (a fresh repository) is clean.
                    if i > 0 {
                        note(format!("only {i} of 4 fields"));
                    }
                    break;
                } else {
                    let tok = rest.split(is_fossil_space).next().unwrap_or("");
                    note(format!(
                        "field {} is not a plain integer: {:?} (Fossil reads 0)",
                        i + 1,
                        clip(tok)
                    ));
                }
                continue;
            }
            match num.parse::<i64>() {
                Ok(v) => *slot = v,
                Err(_) => note(format!("field {} is out of range: {:?}", i + 1, clip(num))),
            }
            rest = after;
            if !rest.is_empty() && !rest.starts_with(is_fossil_space) {
                let tok = rest.split(is_fossil_space).next().unwrap_or("");
                note(format!(
                    "field {} has trailing characters: {:?}",
                    i + 1,
                    clip(tok)
                ));
            }
        }
        let mut lease = Lease {
            current: Slot {
                pid: ints[0],
                expires: ints[1],
                ..Slot::EMPTY
            },
            next: Slot {
                pid: ints[2],
                expires: ints[3],
                ..Slot::EMPTY
            },
            boot: None,
            term: 0,
        };
        for tok in rest.split(is_fossil_space).filter(|t| !t.is_empty()) {
            let Some((key, value)) = tok.split_once('=') else {
                note(format!("unexpected extra field {:?}", clip(tok)));
                continue;
            };
            let (slot, field) = if let Some(f) = key.strip_prefix("cur-") {
                (&mut lease.current, f)
            } else if let Some(f) = key.strip_prefix("next-") {
                (&mut lease.next, f)
            } else {
                match key {
                    "boot" if is_boot_id(value) => lease.boot = Some(value.to_owned()),
                    "boot" => note(format!("bad boot id {:?}", clip(value))),
                    // A bad term reads as 0: never a term a worker holds
                    // (takeovers start at 1), so the safe reading.
                    "term" => match plain_u64(value) {
                        Some(v) => lease.term = v,
                        None => {
                            lease.term = 0;
                            note(format!("bad term {:?}", clip(value)));
                        }
                    },
                    // Unknown keys are ignored so that a newer writer's fields
                    // do not make an older reader think the lease is corrupt.
                    _ => {}
                }
                continue;
            };
            let ok = match field {
                "start" => plain_u64(value).map(|v| slot.start = Some(v)),
                "ns" => plain_u64(value).map(|v| slot.ns = Some(v)),
                "alive-until" => plain_u64(value)
                    .and_then(|v| i64::try_from(v).ok())
                    .map(|v| slot.alive_until = Some(v)),
                _ => Some(()),
            };
            if ok.is_none() {
                note(format!("bad {key} {:?}", clip(value)));
            }
        }
        (lease, problem)
    }

    /// Encodes the lease for storage: Fossil's four integers, then our
    /// extension fields for whatever is recorded.
    pub fn encode(&self) -> String {
        use std::fmt::Write;
        // Fossil cannot read a sign: a negative value is written as 0,
        // which is what both readers would make of it anyway.
        let mut s = format!(
            "{} {} {} {}",
            self.current.pid.max(0),
            self.current.expires.max(0),
            self.next.pid.max(0),
            self.next.expires.max(0)
        );
        for (prefix, slot) in [("cur", &self.current), ("next", &self.next)] {
            if let Some(v) = slot.start {
                let _ = write!(s, " {prefix}-start={v}");
            }
            if let Some(v) = slot.ns {
                let _ = write!(s, " {prefix}-ns={v}");
            }
            if let Some(v) = slot.alive_until {
                let _ = write!(s, " {prefix}-alive-until={}", v.max(0));
            }
        }
        if let Some(b) = self.boot.as_deref().filter(|b| is_boot_id(b)) {
            let _ = write!(s, " boot={b}");
        }
        // Only when set, so that a lease with none (Fossil's) is unchanged.
        if self.term > 0 {
            let _ = write!(s, " term={}", self.term);
        }
        s
    }
}

/// White space as Fossil's `fossil_isspace` sees it.
fn is_fossil_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// A non-negative decimal integer, digits only (no sign, no spaces).
fn plain_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
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
        let (l, problem) = Lease::parse_report("-5 100 -1 100");
        assert!(!l.current.is_held());
        assert!(!l.next.is_held());
        assert!(problem.is_some());
    }

    /// The four integers are read as Fossil's `backofficeParseInt` reads
    /// them: white space of any kind skipped, digits taken, anything else
    /// stops the reading (and reads as 0 from there on).
    #[test]
    fn integers_are_read_as_fossil_reads_them() {
        let far = 4_102_444_800;
        for (text, want) in [
            ("1 4102444800 0 0", [1, far, 0, 0]),
            ("0001 4102444800 0 0", [1, far, 0, 0]),
            ("1\t4102444800\t0\t0", [1, far, 0, 0]),
            ("\n 1 \r\n4102444800  0 0", [1, far, 0, 0]),
            ("+1 4102444800 0 0", [0, 0, 0, 0]),
            ("-1 4102444800 5 6", [0, 0, 0, 0]),
            ("1x 4102444800 5 6", [1, 0, 0, 0]),
            ("1 2 +3 4", [1, 2, 0, 0]),
        ] {
            let (l, _) = Lease::parse_report(text);
            assert_eq!(
                [l.current.pid, l.current.expires, l.next.pid, l.next.expires],
                want,
                "{text:?}"
            );
        }
        let (l, problem) = Lease::parse_report("1 4102444800 0 0 cur-start=zz");
        assert_eq!((l.current.pid, l.current.start), (1, None));
        assert!(problem.unwrap().contains("cur-start"));
        let (l, problem) = Lease::parse_report("7 8 0 0 cur-start=+5 cur-ns=-1");
        assert_eq!((l.current.start, l.current.ns), (None, None));
        assert!(problem.is_some());
    }

    #[test]
    fn namespace_and_heartbeat_round_trip() {
        let text = "10 20 30 40 cur-start=5 cur-ns=4026531836 cur-alive-until=25 next-start=6 next-ns=7 next-alive-until=40 boot=ab-cd";
        let (l, problem) = Lease::parse_report(text);
        assert_eq!(problem, None);
        assert_eq!(l.current.ns, Some(4_026_531_836));
        assert_eq!(l.current.alive_until, Some(25));
        assert_eq!(l.next.alive_until, Some(40));
        assert_eq!(l.encode(), text);
    }

    /// The fencing term: written after the other fields only when above 0,
    /// read back exactly; a bad one reads as 0 and is reported; a lease
    /// without one (Fossil's) is term 0 and re-encodes byte for byte.
    #[test]
    fn term_round_trips_and_is_only_written_when_set() {
        let text = "10 20 0 0 cur-start=5 boot=ab-cd term=7";
        let (l, problem) = Lease::parse_report(text);
        assert_eq!(problem, None);
        assert_eq!(l.term, 7);
        assert_eq!(l.encode(), text);
        let max = format!("1 2 0 0 term={}", u64::MAX);
        assert_eq!(Lease::parse(&max).term, u64::MAX);
        assert_eq!(Lease::parse(&max).encode(), max);
        for fossil in ["2023 1795261729 0 0", "1 2 3 4 cur-start=5"] {
            let l = Lease::parse(fossil);
            assert_eq!(l.term, 0);
            assert_eq!(l.encode(), fossil);
        }
        let zero = Lease::parse("1 2 3 4 term=0");
        assert_eq!(zero.term, 0);
        assert_eq!(zero.encode(), "1 2 3 4");
        for bad in [
            "term=x",
            "term=-1",
            "term=+3",
            "term=",
            "term=99999999999999999999",
        ] {
            let (l, problem) = Lease::parse_report(&format!("1 2 3 4 {bad}"));
            assert_eq!(l.term, 0, "{bad}");
            assert!(problem.unwrap().contains("bad term"), "{bad}");
        }
        // A bad term after a good one still reads as 0 (never a stale term).
        assert_eq!(Lease::parse("1 2 3 4 term=5 term=z").term, 0);
    }

    fn slot() -> impl Strategy<Value = Slot> {
        (
            0..=i64::MAX,
            0..=i64::MAX,
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(0..=i64::MAX),
        )
            .prop_map(|(pid, expires, start, ns, alive_until)| Slot {
                pid,
                expires,
                start,
                ns,
                alive_until,
            })
    }

    /// Fossil's `backofficeParseInt`, four times, in Rust (u64 arithmetic;
    /// a value that does not fit an i64 reads as 0 here).
    fn fossil_model(text: &str) -> [i64; 4] {
        let b = text.as_bytes();
        let mut i = 0;
        let mut out = [0i64; 4];
        for v in out.iter_mut() {
            while i < b.len() && (b[i] == b' ' || (b'\t'..=b'\r').contains(&b[i])) {
                i += 1;
            }
            let mut acc: Option<i64> = Some(0);
            while i < b.len() && b[i].is_ascii_digit() {
                acc = acc
                    .and_then(|a| a.checked_mul(10))
                    .and_then(|a| a.checked_add(i64::from(b[i] - b'0')));
                i += 1;
            }
            *v = acc.unwrap_or(0);
        }
        out
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
            current in slot(), next in slot(), boot in proptest::option::of("[0-9a-f-]{1,64}"),
            term in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
        ) {
            let lease = Lease { current, next, boot, term };
            let text = lease.encode();
            let (back, problem) = Lease::parse_report(&text);
            prop_assert_eq!(problem, None);
            prop_assert_eq!(back, lease);
        }

        /// The first four fields are always exactly what Fossil would read.
        #[test]
        fn fossil_prefix_is_four_integers(current in slot(), next in slot(), term in any::<u64>()) {
            let text = Lease { current, next, boot: Some("b".into()), term }.encode();
            let ints: Vec<i64> = text.split(' ').take(4).map(|t| t.parse().unwrap()).collect();
            prop_assert_eq!(ints, vec![current.pid, current.expires, next.pid, next.expires]);
            // And Fossil's own reader, term or not, reads just those.
            prop_assert_eq!(fossil_model(&text), [current.pid, current.expires, next.pid, next.expires]);
        }

        /// Whatever is stored, what we read as the four integers is what
        /// Fossil's reader makes of it (modelled here on its C code, with
        /// out-of-range numbers read as 0 where Fossil's would wrap).
        #[test]
        fn four_integers_agree_with_fossils_reader(
            parts in proptest::collection::vec("([+-]?[0-9]{0,21}[a-z=]{0,2}|[ \t\n]{0,2}|term=[0-9a-z+-]{0,4})", 0..8)
        ) {
            let text = parts.join(" ");
            let (l, _) = Lease::parse_report(&text);
            prop_assert_eq!(
                [l.current.pid, l.current.expires, l.next.pid, l.next.expires],
                fossil_model(&text)
            );
        }

        /// Encoding never writes a sign, so Fossil reads what we meant.
        #[test]
        fn encoding_is_fossil_readable(pid in any::<i64>(), expires in any::<i64>()) {
            let lease = Lease { current: Slot { pid, expires, ..Slot::EMPTY }, ..Lease::default() };
            let text = lease.encode();
            prop_assert_eq!(fossil_model(&text), [pid.max(0), expires.max(0), 0, 0]);
        }
    }
}
