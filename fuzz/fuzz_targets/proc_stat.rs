//! `process::parse_proc_stat` on arbitrary text never panics; on a
//! well-formed line built from the input (any command name, even one with
//! spaces and parentheses) it finds the state and the start time.
#![no_main]

use backoffice::process::{ProcStat, parse_proc_stat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let lossy = String::from_utf8_lossy(data);
    let parsed = parse_proc_stat(&lossy);
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(parse_proc_stat(text), parsed);
    }
    if let Some(p) = parsed {
        // Fields after the 22nd are ignored.
        assert_eq!(parse_proc_stat(&format!("{lossy} 7 8 9")), Some(p));
    }

    // A line as the kernel writes it, around a fuzzed command name.
    if data.len() >= 9 {
        let start = u64::from_le_bytes(data[..8].try_into().unwrap());
        let state = match data[8] {
            b if b.is_ascii_graphic() && b != b')' => char::from(b),
            _ => 'S',
        };
        let comm = String::from_utf8_lossy(&data[9..]);
        let line = format!(
            "4242 ({comm}) {state} 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start} 123 45 \
             18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
        );
        assert_eq!(
            parse_proc_stat(&line),
            Some(ProcStat { state, start }),
            "line {line:?}"
        );
    }
});
