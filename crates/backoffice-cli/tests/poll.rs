//! Sweeps over many repositories, and `--poll`: work only where it is due,
//! failures reported without stopping the sweep, revisits on change, on
//! due work and after `--min`.

use std::process::Command;
use std::time::Duration;

use crate::harness::{Cmd, Env, TestRepo, boot, kill, now, proc_stat, wait_child, wait_until};

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn count(lines: &[String], repo: &str, what: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.contains(&format!(" {repo} ")) && l.contains(what))
        .count()
}

#[test]
fn sweep_works_only_where_work_is_due() {
    let env = Env::new();
    let repos: Vec<TestRepo> = (1..=5).map(|i| env.repo(&format!("r{i}.db"), 60)).collect();
    repos[1].publish(2);
    repos[3].publish(1);
    let log = env.path("bo.log");
    let mut args = vec![
        "run".to_owned(),
        "--debug".into(),
        "--logfile".into(),
        log.display().to_string(),
    ];
    args.extend(repos.iter().map(|r| r.path.display().to_string()));
    Cmd::host().args(&args).output().success();
    assert_eq!(repos[1].pending() + repos[3].pending(), 0);
    let l = lines(&log);
    assert_eq!(l.len(), 5, "{l:#?}");
    assert_eq!(count(&l, "r2.db", "2 outbox elapse-time"), 1, "{l:#?}");
    assert_eq!(count(&l, "r4.db", "1 outbox elapse-time"), 1, "{l:#?}");
    for idle in [0, 2, 4] {
        let name = format!("r{}.db", idle + 1);
        assert_eq!(count(&l, &name, "no-op (nothing due)"), 1, "{l:#?}");
        assert_eq!(
            repos[idle].get("backoffice"),
            None,
            "{name}: lease written though nothing was due"
        );
    }
}

#[test]
fn a_failing_repository_does_not_stop_the_sweep() {
    let env = Env::new();
    let ok1 = env.repo("ok1.db", 60);
    let ok2 = env.repo("ok2.db", 60);
    let locked = env.repo("locked.db", 60);
    ok1.publish(1);
    ok2.publish(1);
    locked.publish(1);
    let junk = env.path("junk.db");
    std::fs::write(
        &junk,
        "not a database at all, just text; long enough for a header".repeat(10),
    )
    .unwrap();
    let missing = env.path("missing.db");
    let holder = locked.conn();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let done = Cmd::host()
        .args(["run", "--busy-timeout", "200"])
        .args([&ok1.path, &junk, &missing, &locked.path, &ok2.path])
        .output();
    holder.execute_batch("COMMIT").unwrap();
    let err = done.stderr();
    assert!(
        !done.out.status.success(),
        "a sweep with failures exits non-zero"
    );
    assert!(err.contains("junk.db is not an SQLite database"), "{err}");
    assert!(err.contains("missing.db does not exist"), "{err}");
    assert!(
        err.contains("locked.db is locked by another writer"),
        "{err}"
    );
    assert_eq!(
        ok1.pending() + ok2.pending(),
        0,
        "the healthy repositories were serviced"
    );
    assert_eq!(locked.pending(), 1, "the locked one lost nothing");
}

/// `--poll` revisits a repository when work becomes due, when its file
/// changed, and (with `--min`) when enough time passed.
#[test]
fn poll_revisits_on_due_work_and_on_change() {
    let env = Env::new();
    let r1 = env.repo("r1.db", 1);
    let r2 = env.repo("r2.db", 1);
    let log = env.path("bo.log");
    let mut poller = Cmd::host()
        .args([
            "run",
            "--poll",
            "1",
            "--sweeps",
            "4",
            "--debug",
            "--logfile",
        ])
        .arg(&log)
        .args([&r1.path, &r2.path])
        .spawn();
    // Sweep 1: both idle.
    assert!(wait_until(Duration::from_secs(5), || lines(&log).len() >= 2));
    // Work arrives in r1: the next sweep runs it.
    r1.publish(1);
    assert!(wait_until(Duration::from_secs(5), || lines(&log).len() >= 4));
    assert_eq!(r1.pending(), 0);
    // r2 changes without any task being due: the next sweep visits it anyway.
    r2.set("app-setting", "changed");
    assert!(wait_until(Duration::from_secs(5), || lines(&log).len() >= 6));
    wait_child(&mut poller, Duration::from_secs(10), "--poll --sweeps 4");
    let l = lines(&log);
    assert_eq!(l.len(), 8, "{l:#?}");
    assert_eq!(count(&l, "r1.db", "1 outbox elapse-time"), 1, "{l:#?}");
    // The visit on change is a real (no-op) run, not a skip.
    let r2_runs: Vec<&String> = l
        .iter()
        .filter(|x| x.contains(" r2.db no-op elapse-time"))
        .collect();
    assert_eq!(r2_runs.len(), 1, "{l:#?}");
    assert_eq!(count(&l, "r2.db", "no-op (nothing due)"), 3, "{l:#?}");
}

#[test]
fn poll_min_zero_runs_every_repository_every_sweep() {
    let env = Env::new();
    let r1 = env.repo("r1.db", 1);
    let r2 = env.repo("r2.db", 1);
    let log = env.path("bo.log");
    Cmd::host()
        // Sweeps 2 s apart: with a 1 s lease, runs must be more than 1 s apart.
        .args([
            "run",
            "--poll",
            "2",
            "--min",
            "0",
            "--sweeps",
            "2",
            "--debug",
            "--logfile",
        ])
        .arg(&log)
        .args([&r1.path, &r2.path])
        .output()
        .success();
    let l = lines(&log);
    assert_eq!(count(&l, "r1.db", "no-op elapse-time"), 2, "{l:#?}");
    assert_eq!(count(&l, "r2.db", "no-op elapse-time"), 2, "{l:#?}");
}

/// A sweep honours the lease unless `--nolease`.
#[test]
fn poll_honours_the_lease_unless_nolease() {
    let env = Env::new();
    let r = env.repo("r.db", 60);
    r.publish(1);
    let holder = Command::new("sleep").arg("30").spawn().unwrap();
    let start = proc_stat(holder.id()).unwrap().start;
    r.set(
        "backoffice",
        &format!(
            "{} {} 0 0 cur-start={start} boot={}",
            holder.id(),
            now() + 30,
            boot()
        ),
    );
    let other = env.repo("other.db", 60);
    Cmd::host()
        .args(["run", "--poll", "1", "--sweeps", "1"])
        .args([&r.path, &other.path])
        .output()
        .success();
    assert_eq!(r.pending(), 1, "a held lease is respected by sweeps");
    Cmd::host()
        .args(["run", "--poll", "1", "--sweeps", "1", "--nolease"])
        .args([&r.path, &other.path])
        .output()
        .success();
    assert_eq!(r.pending(), 0, "--nolease runs regardless");
    kill(holder);
}
