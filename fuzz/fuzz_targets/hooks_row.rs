//! The `hooks` config row (Fossil's JSON, edited by hand or by Fossil) on
//! arbitrary text: `hooks::parse` never panics; when it accepts the text,
//! `hooks::assign_ids` — with any "highest id issued" — either refuses
//! cleanly (no id left) or leaves every entry a positive, unique id that is
//! no lower than before for entries that had a valid one, and new ids above
//! both the array's ids and the issued one. No arithmetic on the stored ids
//! may wrap (a debug build panics on overflow, which the fuzzer reports).
#![no_main]

use backoffice_tasks::hooks::{HookError, assign_ids, parse};
use libfuzzer_sys::fuzz_target;

fn check(text: &str, issued: i64) {
    let Ok(mut hooks) = parse(Some(text)) else {
        return;
    };
    let before: Vec<i64> = hooks.iter().map(|h| h.id).collect();
    match assign_ids(&mut hooks, issued) {
        Err(HookError::IdsExhausted) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(top) => {
            let mut seen = std::collections::HashSet::new();
            for (h, old) in hooks.iter().zip(&before) {
                assert!(h.id > 0, "id {} not positive", h.id);
                assert!(seen.insert(h.id), "id {} given twice", h.id);
                assert!(h.id <= top, "id {} above the reported top {top}", h.id);
                if h.id != *old {
                    assert!(h.id > issued.max(0), "new id {} not above issued {issued}", h.id);
                    assert!(before.iter().all(|&b| h.id > b), "new id {} not above the array's", h.id);
                }
            }
            // Assigning again changes nothing.
            let again = hooks.clone();
            assert_eq!(assign_ids(&mut hooks, top).ok(), Some(top));
            assert_eq!(hooks, again);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes choose the highest id issued; the rest is the row.
    let (head, rest) = data.split_at(data.len().min(8));
    let mut b = [0u8; 8];
    b[..head.len()].copy_from_slice(head);
    let issued = i64::from_le_bytes(b);
    check(&String::from_utf8_lossy(rest), issued);
});
