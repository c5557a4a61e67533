//! The durations and times derived from a stored lease: whatever the row
//! holds, whatever the clock and the settings say, deciding, reporting an
//! over-running holder and judging a holder never panic (a debug build
//! checks every overflow), never report a negative number of seconds, and
//! never write or sleep past the bounds a legitimate writer could reach; and
//! the fencing term moves by one on a takeover, never otherwise.
#![no_main]

use backoffice::fuzzing::{Decision, Me, decide, overrun, overrun_message};
use backoffice::process::{Identity, liveness_at};
use backoffice::{Lease, clock};
use libfuzzer_sys::fuzz_target;

fn i64_at(data: &[u8], i: usize) -> i64 {
    let mut b = [0u8; 8];
    for (k, x) in b.iter_mut().enumerate() {
        *x = data.get(i * 8 + k).copied().unwrap_or(0);
    }
    i64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    // 32 bytes of numbers (now, lease time, grace, liveness bits), then the row.
    let now = i64_at(data, 0).checked_abs().unwrap_or(0); // the clock is never negative
    let lease_time = i64_at(data, 1);
    let grace = i64_at(data, 2);
    let bits = i64_at(data, 3);
    let text = String::from_utf8_lossy(data.get(32..).unwrap_or(&[]));
    let stored = Lease::parse(&text);

    for (slot, lt) in [(&stored.current, lease_time), (&stored.next, i64::MIN)] {
        if let Some(m) = overrun_message(slot, now, lt) {
            assert!(!m.contains(" -"), "negative seconds: {m}");
        }
        let _ = overrun(slot, now);
        // Real liveness reads /proc; it must survive any stored numbers.
        let _ = liveness_at(slot, stored.boot.as_deref(), lt, now);
    }
    let _ = clock::relative(stored.current.expires, now);
    let _ = clock::until(stored.current.expires);

    let mut n = 0u32;
    let mut alive = |_: &backoffice::Slot| {
        n += 1;
        bits & (1 << (n % 63)) != 0
    };
    let me = Me {
        id: Identity::current(),
        boot: None,
        now,
        lease_time,
        grace,
        nodelay: bits < 0,
    };
    let plan = decide(&stored, me, &mut alive);
    let l = lease_time.max(1);
    let limit = now.saturating_add(l.saturating_mul(2));
    if let Decision::Take(x) | Decision::Queue { lease: x, .. } = &plan.decision {
        assert!(x.current.expires <= limit && x.next.expires <= limit, "{x:?}");
    }
    // The fencing term moves on a takeover only, by one (saturating).
    assert_eq!(plan.normalized.term, stored.term);
    match &plan.decision {
        Decision::Take(x) => assert_eq!(x.term, stored.term.saturating_add(1)),
        Decision::Queue { lease: x, .. } => assert_eq!(x.term, stored.term),
        _ => {}
    }
    if let Decision::Queue { wake_at, .. } = plan.decision {
        assert!(wake_at.saturating_sub(now) <= l.saturating_add(1));
    }
    assert!(plan.normalized.current.expires <= limit);
    // What we would write, Fossil reads back the same four integers.
    let back = Lease::parse(&plan.normalized.encode());
    assert_eq!(back.current.pid, plan.normalized.current.pid.max(0));
});
