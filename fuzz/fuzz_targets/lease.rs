//! `Lease::parse_report` on arbitrary text: it never panics, `parse` agrees
//! with it, and whatever it returns re-encodes and re-parses identically and
//! cleanly. For a clean value, re-encoding also keeps Fossil's four integers.
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

    if problem.is_none() {
        // A clean value: its first four integers are exactly what Fossil
        // reads, and they come back first in the encoding.
        let ints: Vec<i64> = text
            .split_ascii_whitespace()
            .take(4)
            .map(|t| t.parse().expect("a clean lease has integer fields"))
            .collect();
        assert!(
            ints.is_empty() || ints.len() == 4,
            "clean with {} fields",
            ints.len()
        );
        let ints = if ints.is_empty() { vec![0; 4] } else { ints };
        let prefix: Vec<i64> = encoded
            .split(' ')
            .take(4)
            .map(|t| t.parse().unwrap())
            .collect();
        assert_eq!(prefix, ints);
    }
}

fuzz_target!(|data: &[u8]| {
    check(&String::from_utf8_lossy(data));
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
});
