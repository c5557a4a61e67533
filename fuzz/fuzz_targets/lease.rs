//! `Lease::parse_report` on arbitrary text: it never panics, `parse` agrees
//! with it, and whatever it returns re-encodes and re-parses identically and
//! cleanly (the fencing term included, written only when above 0). For a
//! clean value the four integers are what Fossil's reader reads, and the
//! encoding of any decoded value reads back the same in Fossil.
#![no_main]

use backoffice::Lease;
use libfuzzer_sys::fuzz_target;

fn check(text: &str) {
    let (lease, problem) = Lease::parse_report(text);
    assert_eq!(Lease::parse(text), lease, "parse and parse_report disagree");

    // Any decoded lease survives encode -> parse unchanged and clean.
    let encoded = lease.encode();
    let (back, back_problem) = Lease::parse_report(&encoded);
    assert_eq!(
        back_problem, None,
        "re-parsing {encoded:?} reported a problem"
    );
    assert_eq!(back, lease, "{text:?} -> {encoded:?} did not round-trip");
    assert_eq!(back.encode(), encoded, "encoding is not stable");
    // The fencing term is written only when set, so a lease without one
    // (Fossil's) round-trips byte for byte.
    assert_eq!(encoded.contains(" term="), lease.term > 0, "{encoded:?}");

    // Whatever the text, the four integers are what Fossil's reader makes
    // of it (values beyond i64 read as 0 here), and they come back first in
    // the encoding, so Fossil reads the same holder after we rewrite it.
    let fossil = fossil_reads(text);
    if problem.is_none() {
        assert_eq!(
            [lease.current.pid, lease.current.expires, lease.next.pid, lease.next.expires],
            fossil,
            "{text:?}"
        );
    }
    assert_eq!(
        fossil_reads(&encoded),
        [lease.current.pid, lease.current.expires, lease.next.pid, lease.next.expires]
    );
}

/// Fossil's `backofficeParseInt`, four times: skip white space (space and
/// \t..\r), take digits; no sign. Out of i64 range reads as 0.
fn fossil_reads(text: &str) -> [i64; 4] {
    let b = text.as_bytes();
    let mut i = 0;
    let mut out = [0i64; 4];
    for v in out.iter_mut() {
        while i < b.len() && (b[i] == b' ' || (b'\t'..=b'\r').contains(&b[i])) {
            i += 1;
        }
        let mut acc = Some(0i64);
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

fuzz_target!(|data: &[u8]| {
    check(&String::from_utf8_lossy(data));
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
});
