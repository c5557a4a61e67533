//! The worker loop, proved with many real processes on one repository:
//! exclusion, spacing, on-deck promotion, and the no-delay, no-lease and
//! disable modes.

use std::time::Duration;

use crate::harness::{Cmd, Env, kill, now, wait_child, wait_until};

/// Twenty workers started together, in waves, while new work keeps
/// arriving: their work intervals never overlap, and runs start at least
/// one lease time apart.
#[test]
fn twenty_concurrent_workers_never_overlap() {
    let env = Env::new();
    let r = env.repo("r.db", 1);
    r.set("host-work-ms", "300");
    let repo = r.path.to_str().unwrap();
    let mut children = Vec::new();
    for wave in 0..4 {
        r.publish(3);
        for _ in 0..5 {
            children.push(Cmd::host().args(["run", repo]).spawn());
        }
        if wave < 3 {
            std::thread::sleep(Duration::from_millis(700));
        }
    }
    for mut c in children {
        assert!(wait_child(&mut c, Duration::from_secs(30), "a worker").success());
    }
    let runs = r.runs();
    assert!(runs.len() >= 2, "expected several runs, got {runs:?}");
    for w in runs.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert!(a.2 <= b.1, "runs overlap: {a:?} and {b:?}");
        let gap = Duration::from_nanos((b.1 - a.1) as u64);
        assert!(
            gap >= Duration::from_secs(1),
            "runs {a:?} and {b:?} only {gap:?} apart (L = 1 s)"
        );
    }
    assert_eq!(r.pending(), 0, "every request's work was done");
}

/// A worker that finds the lease held queues on deck, sleeps, and runs as
/// soon as the lease ends; a third finds it on deck and leaves at once.
#[test]
fn on_deck_worker_runs_when_the_lease_ends() {
    let env = Env::new();
    let r = env.repo("r.db", 2);
    let repo = r.path.to_str().unwrap();
    r.publish(1);
    Cmd::host().args(["run", repo]).output().success();
    assert_eq!(r.pending(), 0);
    let first = r.lease();
    assert_eq!(first.current.pid, 0, "released after the run");
    let expires = first.current.expires;

    r.publish(1);
    let mut deck = Cmd::host().args(["run", repo]).spawn();
    let deck_pid = i64::from(deck.id());
    assert!(
        wait_until(Duration::from_secs(5), || r.lease().next.pid == deck_pid),
        "the second worker should be on deck: {:?}",
        r.lease()
    );
    let lease = Cmd::backoffice()
        .args(["lease", "-R", repo])
        .output()
        .success();
    assert!(
        lease.contains(&format!("idNext:     {deck_pid:<20} (exists)")),
        "{lease}"
    );
    // A third worker sees a live on-deck worker and leaves at once.
    let third = Cmd::host().args(["run", repo]).output();
    assert!(third.out.status.success());
    assert!(
        third.elapsed < Duration::from_secs(1),
        "took {:?}",
        third.elapsed
    );

    wait_child(&mut deck, Duration::from_secs(10), "the on-deck worker");
    assert_eq!(r.pending(), 0);
    let runs = r.runs();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(i64::from(runs[1].0), deck_pid);
    // It ran only after the first lease expired (expiry second + 1).
    let started = (runs[1].1 / 1_000_000_000) as i64;
    assert!(
        started > expires,
        "ran at {started}, lease expired at {expires}"
    );
}

/// `--nodelay` (and the `backoffice-nodelay` setting) exit at once when
/// the lease is held; `--nolease` runs regardless; `backoffice-disable`
/// stops the trigger but not a manual run.
#[test]
fn nodelay_nolease_and_disable() {
    let env = Env::new();
    let r = env.repo("r.db", 30);
    let repo = r.path.to_str().unwrap();
    r.publish(1);
    Cmd::host().args(["run", repo]).output().success();
    assert_eq!(r.runs().len(), 1);

    // The lease is now held for 30 s.
    r.publish(1);
    let nd = Cmd::host().args(["run", "--nodelay", repo]).output();
    assert!(nd.out.status.success());
    assert!(
        nd.elapsed < Duration::from_secs(2),
        "--nodelay waited {:?}",
        nd.elapsed
    );
    assert_eq!(
        r.pending(),
        1,
        "--nodelay must not work while the lease is held"
    );

    r.set("backoffice-nodelay", "on");
    let nd = Cmd::host().args(["run", repo]).output();
    assert!(
        nd.elapsed < Duration::from_secs(2),
        "backoffice-nodelay waited {:?}",
        nd.elapsed
    );
    assert_eq!(r.pending(), 1);
    r.set("backoffice-nodelay", "off");

    Cmd::host()
        .args(["run", "--nolease", repo])
        .output()
        .success();
    assert_eq!(
        r.pending(),
        0,
        "--nolease runs the work regardless of the lease"
    );

    r.publish(1);
    r.set("backoffice-disable", "on");
    let out = Cmd::host().args(["trigger", repo]).output().success();
    assert!(out.contains("backoffice-disable is on"), "{out}");
    Cmd::host()
        .args(["lease", "--reset", "-R", repo])
        .output()
        .success();
    Cmd::host().args(["run", repo]).output().success();
    assert_eq!(
        r.pending(),
        0,
        "a manual run ignores backoffice-disable, as in Fossil"
    );
}

/// A task that fails or panics is logged; the other tasks still run and
/// the failure shows in `status`.
#[test]
fn failing_task_is_logged_and_others_still_run() {
    let env = Env::new();
    let r = env.repo("r.db", 1);
    let repo = r.path.to_str().unwrap();
    let log = env.path("bo.log");
    r.set("backoffice-logfile", log.to_str().unwrap());
    for mode in ["error", "panic"] {
        r.set("host-fail", mode);
        r.publish(2);
        Cmd::host()
            .args(["run", "--nolease", repo])
            .output()
            .success();
        assert_eq!(
            r.pending(),
            0,
            "the outbox task ran after flaky failed ({mode})"
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("flaky-failed(flaky task failed on purpose) 2 outbox elapse-time"),
        "{text}"
    );
    assert!(
        lines[1].contains("flaky-failed(panicked: flaky task panicked on purpose) 2 outbox"),
        "{text}"
    );
    let status = Cmd::host().args(["status", "-R", repo]).output().success();
    assert!(status.contains("failed: flaky"), "{status}");
    assert!(
        status.contains("problem:    task flaky failed in the last run"),
        "{status}"
    );
}

/// The run log: one line per run that did work, Fossil's format; `no-op`
/// runs only under `--debug`.
#[test]
fn run_log_lines() {
    let env = Env::new();
    let r = env.repo("r.db", 1);
    let repo = r.path.to_str().unwrap();
    let log = env.path("bo.log");
    let logs = log.to_str().unwrap();
    r.set("project-name", "My Project");
    Cmd::host()
        .args(["run", "--nolease", "--logfile", logs, repo])
        .output()
        .success();
    assert!(!log.exists(), "a no-op run writes no line without --debug");
    Cmd::host()
        .args(["run", "--nolease", "--debug", "--logfile", logs, repo])
        .output()
        .success();
    r.publish(3);
    Cmd::host()
        .args(["run", "--nolease", "--logfile", logs, repo])
        .output()
        .success();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let shape = |l: &str, middle: &str| {
        // YYYY-MM-DD HH:MM:SS PROJECT ... elapse-time N us
        let f: Vec<&str> = l.split(' ').collect();
        f[0].len() == 10
            && f[1].len() == 8
            && f[2] == "My-Project"
            && l.contains(middle)
            && l.ends_with(" us")
            && f[f.len() - 3] == "elapse-time"
            && f[f.len() - 2].parse::<u64>().is_ok()
    };
    assert!(shape(lines[0], " no-op elapse-time "), "{}", lines[0]);
    assert!(shape(lines[1], " 3 outbox elapse-time "), "{}", lines[1]);
}

/// The lease time is a setting; at least 1 s; a malformed stored value
/// falls back to the default and is reported, never fatal.
#[test]
fn malformed_lease_time_falls_back_and_is_reported() {
    let env = Env::new();
    let r = env.repo("r.db", 1);
    let repo = r.path.to_str().unwrap();
    r.set("backoffice-lease-time", "a while");
    r.publish(1);
    Cmd::host().args(["run", repo]).output().success();
    assert_eq!(r.pending(), 0);
    let l = r.lease();
    let t = now();
    assert!(
        (t + 55..=t + 61).contains(&l.current.expires),
        "default 60 s lease: {l:?}"
    );
    let status = Cmd::host().args(["status", "-R", repo]).output().success();
    assert!(
        status.contains("bad value \"a while\" for setting `backoffice-lease-time`"),
        "{status}"
    );
}

/// A worker left sleeping on deck is killed: the next one takes its place
/// (a dead on-deck worker never blocks anybody).
#[test]
fn killed_on_deck_worker_is_replaced() {
    let env = Env::new();
    let r = env.repo("r.db", 3);
    let repo = r.path.to_str().unwrap();
    r.publish(1);
    Cmd::host().args(["run", repo]).output().success();
    r.publish(1);
    let deck = Cmd::host().args(["run", repo]).spawn();
    let pid = i64::from(deck.id());
    assert!(wait_until(Duration::from_secs(5), || r.lease().next.pid == pid));
    kill(deck);
    let mut next = Cmd::host().args(["run", repo]).spawn();
    let next_pid = i64::from(next.id());
    assert!(
        wait_until(Duration::from_secs(5), || r.lease().next.pid == next_pid),
        "a new worker should replace the dead one on deck: {:?}",
        r.lease()
    );
    wait_child(&mut next, Duration::from_secs(10), "the new on-deck worker");
    assert_eq!(r.pending(), 0);
}
