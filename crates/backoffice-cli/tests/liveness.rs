//! Lease liveness with real processes: garbage and stale leases, pid reuse,
//! zombie holders, and a lease time far in the future.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Cmd, Env, boot, kill, now, proc_stat};

/// Whatever the lease row holds, a worker goes ahead and rewrites it clean,
/// and `backoffice lease` names the problem.
#[test]
fn garbage_leases_never_stop_the_work() {
    let env = Env::new();
    let r = env.repo("r.db", 1);
    let repo = r.path.to_str().unwrap();
    for garbage in [
        "garbage",
        "1 2",
        "-7 -7 -7 -7",
        "99999999999999999999 1 2 3",
        "1 2 3 4 cur-start=x boot=ZZZ",
        "\u{0}\u{1}\u{2}",
        "",
    ] {
        r.set("backoffice", garbage);
        if !garbage.is_empty() && garbage != "-7 -7 -7 -7" {
            let out = Cmd::backoffice()
                .args(["lease", "-R", repo])
                .output()
                .success();
            assert!(
                out.contains("problem:"),
                "{garbage:?} should be reported:\n{out}"
            );
        }
        r.publish(1);
        let done = Cmd::host().args(["run", "--nodelay", repo]).output();
        assert!(done.out.status.success(), "{garbage:?}: {}", done.stderr());
        assert_eq!(r.pending(), 0, "{garbage:?} stopped the work");
        let raw = r.get("backoffice").unwrap();
        let (_, problem) = backoffice::Lease::parse_report(&raw);
        assert_eq!(
            problem, None,
            "{garbage:?} was not rewritten clean: {raw:?}"
        );
    }
}

/// An expired lease naming a process that no longer exists is taken at once.
#[test]
fn stale_lease_of_a_dead_process_is_taken_at_once() {
    let env = Env::new();
    let r = env.repo("r.db", 60);
    let repo = r.path.to_str().unwrap();
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    r.set("backoffice", &format!("{dead} {} 0 0", now() - 1));
    r.publish(1);
    let out = Cmd::host().args(["run", repo]).output();
    assert!(out.out.status.success());
    assert!(
        out.elapsed < Duration::from_secs(2),
        "took {:?}",
        out.elapsed
    );
    assert_eq!(r.pending(), 0);
}

/// Fossil's `kill(pid, 0)` stalls for as long as an unrelated process holds
/// a reused pid. A plain four-integer lease (Fossil's) naming a live
/// unrelated process that started after the lease was taken must not stall
/// us: the next run goes ahead at once.
#[test]
fn reused_pid_in_a_fossil_lease_does_not_stall() {
    let env = Env::new();
    let r = env.repo("r.db", 60);
    let repo = r.path.to_str().unwrap();
    let sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id();
    // Written as Fossil would, with an expiry 5 s ago: taken ~65 s ago,
    // long before `sleep` started.
    r.set("backoffice", &format!("{pid} {} 0 0", now() - 5));
    let lease = Cmd::backoffice()
        .args(["lease", "-R", repo])
        .output()
        .success();
    assert!(lease.contains("(done)"), "{lease}");
    assert!(
        lease.contains("gone (pid reused by a newer process)"),
        "{lease}"
    );
    r.publish(1);
    // Not --nodelay: Fossil's own worker would queue on deck and wait for
    // `sleep` to exit.
    let out = Cmd::host().args(["run", repo]).output();
    assert!(out.out.status.success());
    assert!(
        out.elapsed < Duration::from_secs(3),
        "stalled for {:?}",
        out.elapsed
    );
    assert_eq!(r.pending(), 0);
    kill(sleeper);
}

/// With our extension fields, a live process whose start time differs from
/// the recorded one is not the holder, even before the lease expires in
/// Fossil's terms; and a genuine live holder is respected.
#[test]
fn recorded_start_time_tells_reuse_from_a_live_holder() {
    let env = Env::new();
    let r = env.repo("r.db", 60);
    let repo = r.path.to_str().unwrap();
    let sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id();
    let start = proc_stat(pid).unwrap().start;
    let b = boot();

    // The genuine holder, lease expired but still running: respected.
    r.set(
        "backoffice",
        &format!("{pid} {} 0 0 cur-start={start} boot={b}", now() - 1),
    );
    r.publish(1);
    let out = Cmd::host().args(["run", "--nodelay", repo]).output();
    assert!(out.out.status.success());
    assert_eq!(r.pending(), 1, "a live holder must not be overtaken");

    // Same pid, another start time: a reused pid. Taken at once.
    r.set(
        "backoffice",
        &format!("{pid} {} 0 0 cur-start={} boot={b}", now() - 1, start + 1),
    );
    Cmd::host()
        .args(["run", "--nodelay", repo])
        .output()
        .success();
    assert_eq!(r.pending(), 0, "a reused pid must not block");

    // Another boot's lease: its holders are gone.
    r.publish(1);
    r.set(
        "backoffice",
        &format!("{pid} {} 0 0 cur-start={start} boot=0123-abcd", now() - 1),
    );
    Cmd::host()
        .args(["run", "--nodelay", repo])
        .output()
        .success();
    assert_eq!(r.pending(), 0, "a lease from another boot must not block");
    kill(sleeper);
}

/// A holder that exited but was never reaped (a zombie) is gone. Fossil
/// counts it as alive.
#[test]
fn zombie_holder_is_gone() {
    let env = Env::new();
    let r = env.repo("r.db", 60);
    let repo = r.path.to_str().unwrap();
    // A child we deliberately do not wait for: once it exits it is a zombie.
    let mut z = Command::new("true").stdout(Stdio::null()).spawn().unwrap();
    let pid = z.id();
    assert!(
        crate::harness::wait_until(Duration::from_secs(5), || proc_stat(pid)
            .is_some_and(|s| s.state == 'Z')),
        "no zombie"
    );
    let start = proc_stat(pid).unwrap().start;
    r.set(
        "backoffice",
        &format!("{pid} {} 0 0 cur-start={start} boot={}", now() - 1, boot()),
    );
    let p = Cmd::backoffice()
        .args(["pid", &pid.to_string()])
        .output()
        .success();
    assert!(
        p.contains(&format!("ProcessId {pid}: exists 1 done 1")),
        "{p}"
    );
    let lease = Cmd::backoffice()
        .args(["lease", "-R", repo])
        .output()
        .success();
    assert!(lease.contains("zombie"), "{lease}");
    r.publish(1);
    let out = Cmd::host().args(["run", repo]).output();
    assert!(out.out.status.success());
    assert!(
        out.elapsed < Duration::from_secs(3),
        "stalled for {:?}",
        out.elapsed
    );
    assert_eq!(r.pending(), 0);
    z.wait().unwrap();
}

/// A lease time far in the future (the clock was stepped back) stalls
/// work for at most one lease time after it is seen, not until that time.
#[test]
fn far_future_lease_stalls_at_most_one_lease_time() {
    let env = Env::new();
    let r = env.repo("r.db", 2);
    let repo = r.path.to_str().unwrap();
    r.set("backoffice", &format!("0 {} 0 0", now() + 1_000_000));
    r.publish(1);
    let out = Cmd::host().args(["run", repo]).output();
    assert!(out.out.status.success(), "{}", out.stderr());
    assert!(
        out.elapsed < Duration::from_secs(5),
        "stalled for {:?}",
        out.elapsed
    );
    assert_eq!(r.pending(), 0);

    // In no-delay mode the pulled-back time is written back, so repeated
    // no-delay workers make progress too.
    r.set("backoffice", &format!("0 {} 0 0", now() + 1_000_000));
    r.publish(1);
    Cmd::host()
        .args(["run", "--nodelay", repo])
        .output()
        .success();
    let l = r.lease();
    assert!(l.current.expires <= now() + 2, "not pulled back: {l:?}");
    let ok = crate::harness::wait_until(Duration::from_secs(6), || {
        Cmd::host().args(["run", "--nodelay", repo]).output();
        r.pending() == 0
    });
    assert!(ok, "no-delay workers never got past a far-future lease");
}

/// `backoffice pid` reports like `fossil test-process-id`.
#[test]
fn pid_command_reports_like_fossil() {
    let out = Cmd::backoffice()
        .args(["pid", "1", "2147483647", "-5"])
        .output()
        .success();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ProcessID for this process: "),
        "{out}"
    );
    assert_eq!(lines[1], "ProcessId 1: exists 1 done 0");
    assert_eq!(lines[2], "ProcessId 2147483647: exists 0 done 1");
    assert_eq!(lines[3], "ProcessId -5: exists 0 done 1");
}
