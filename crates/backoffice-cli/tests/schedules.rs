//! Issue 15, schedules through the binary: the command line, a slot found
//! due by `trigger` and by a sweep with nothing written in between, once
//! per slot under concurrent triggers.

use std::time::Duration;

use crate::harness::{Cmd, Env, TestRepo, now, wait_until};

fn schedule(r: &TestRepo, args: &[&str]) -> String {
    Cmd::backoffice()
        .arg("schedule")
        .args(args)
        .args(["-R", r.path.to_str().unwrap()])
        .output()
        .success()
}

fn next_slot(r: &TestRepo, name: &str) -> i64 {
    let out = schedule(r, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["next_slot"].as_i64())
        .unwrap_or_else(|| panic!("{out}"))
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_command_line_adds_lists_pauses_and_refuses_bad_input_by_name() {
    let env = Env::new();
    let r = env.repo("r.db", 60);
    let out = schedule(
        &r,
        &[
            "add",
            "nightly",
            "--cron",
            "0 3 * * *",
            "--tz",
            "europe/paris",
            "--command",
            "true",
        ],
    );
    assert!(
        out.contains("cron \"0 3 * * *\" Europe/Paris, next "),
        "{out}"
    );
    schedule(
        &r,
        &[
            "add",
            "tick",
            "--every",
            "15m",
            "--event",
            "tick",
            "--catch-up",
            "skip",
        ],
    );
    let list = schedule(&r, &["list"]);
    assert!(list.starts_with("NAME"), "{list}");
    assert!(
        list.contains("every 15m") && list.contains("never ran"),
        "{list}"
    );
    schedule(&r, &["pause", "tick"]);
    let show = schedule(&r, &["show", "tick"]);
    assert!(
        show.contains("state:     paused") && show.contains("catch-up:  skip"),
        "{show}"
    );
    schedule(&r, &["resume", "tick"]);
    let status = Cmd::backoffice()
        .args(["status", r.path.to_str().unwrap()])
        .output()
        .success();
    assert!(
        status.contains("schedules: schedule nightly: cron"),
        "{status}"
    );
    for (args, want) in [
        (
            vec!["add", "x", "--cron", "0 3 * *", "--command", "true"],
            "expected five fields",
        ),
        (
            vec![
                "add",
                "x",
                "--cron",
                "0 3 * * *",
                "--tz",
                "Mars/Base",
                "--command",
                "true",
            ],
            "unknown time zone",
        ),
        (
            vec!["add", "x", "--every", "0s", "--command", "true"],
            "from 1s to 366d",
        ),
        (
            vec!["add", "nightly", "--every", "1h", "--command", "true"],
            "exists already",
        ),
        (
            vec!["add", "x y", "--every", "1h", "--command", "true"],
            "bad schedule name",
        ),
        (vec!["remove", "nope"], "no schedule named \"nope\""),
        (vec!["run", "nope"], "no schedule named \"nope\""),
    ] {
        let err = Cmd::backoffice()
            .arg("schedule")
            .args(&args)
            .args(["-R", r.path.to_str().unwrap()])
            .output()
            .failure();
        assert!(err.contains(want), "{args:?}: {err}");
        // Said once, not repeated by the error's chain.
        assert_eq!(err.matches(want).count(), 1, "{err}");
    }
    schedule(&r, &["remove", "nightly"]);
    assert!(!schedule(&r, &["list"]).contains("nightly"));
}

/// A slot passes with nothing written: the after-request check (`trigger`)
/// and a sweep over several repositories (`run A B`) both find it due, from
/// the due summary the previous run left, and each runs it once.
#[test]
fn a_slot_is_found_due_by_trigger_and_by_a_sweep_with_nothing_written() {
    let env = Env::new();
    let out = env.path("out.txt");
    let repos: Vec<TestRepo> = ["a.db", "b.db", "c.db"]
        .iter()
        .map(|n| env.repo(n, 1))
        .collect();
    let cmd = format!(
        "echo \"$BACKOFFICE_REPO $BACKOFFICE_SLOT\" >> '{}'",
        out.display()
    );
    for r in &repos {
        schedule(r, &["add", "tick", "--every", "1m", "--command", &cmd]);
        // A run now: nothing is due, and the summary says when it will be.
        Cmd::backoffice()
            .args(["run", "--nodelay", r.path.to_str().unwrap()])
            .output()
            .success();
        let summary: String = r.get("backoffice-due").unwrap();
        assert!(!summary.contains("never"), "{summary}");
    }
    let a = repos[0].path.to_str().unwrap();
    let said = Cmd::backoffice().args(["trigger", a]).output().success();
    assert!(said.starts_with("not needed"), "{said}");
    let slot = next_slot(&repos[0], "tick");
    // Wait for the slot (at most a minute), writing nothing.
    let wait = (slot - now() + 1).clamp(0, 61) as u64;
    std::thread::sleep(Duration::from_secs(wait));
    let said = Cmd::backoffice().args(["trigger", a]).output().success();
    assert!(said.contains("started worker"), "{said}");
    Cmd::backoffice()
        .args([
            "run",
            "--nodelay",
            repos[1].path.to_str().unwrap(),
            repos[2].path.to_str().unwrap(),
        ])
        .output()
        .success();
    assert!(
        wait_until(Duration::from_secs(20), || lines(&out).len() >= 3),
        "{:?}",
        lines(&out)
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut got = lines(&out);
    got.sort();
    let mut want: Vec<String> = repos
        .iter()
        .map(|r| format!("{} {slot}", std::path::absolute(&r.path).unwrap().display()))
        .collect();
    want.sort();
    assert_eq!(got, want, "each repository's slot ran once");
}

/// Once per slot under concurrent workers and random SIGKILLs: for a
/// bounded time, thirty `run` workers at a time on one repository (lease
/// time one second, a schedule every second), a random one killed every
/// 400 ms, and the lease holder while its command runs (its command's
/// process tree dies with it) whenever a slot finished since the last
/// such kill. The
/// command appends its slot to a file after a pause, holding a lock
/// (`flock -n`: a second command at the same time would write `overlap`).
/// Afterwards every slot that ran is in the file exactly once, and no two
/// commands ever overlapped.
#[test]
fn once_per_slot_under_thirty_workers_and_random_kills() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    let r = env.repo("r.db", 1);
    let repo = r.path.to_str().unwrap().to_owned();
    let out = env.path("slots.txt");
    let lock = env.path("slots.lock");
    let cmd = format!(
        "flock -n {lock} sh -c 'sleep 0.3; echo \"$BACKOFFICE_SLOT\" >> {out}' || echo overlap >> {out}",
        lock = lock.display(),
        out = out.display()
    );
    schedule(&r, &["add", "tick", "--every", "1s", "--command", &cmd]);
    let log = env.path("workers.log");
    let worker = || {
        Cmd::backoffice()
            .args(["run", "--logfile", log.to_str().unwrap(), &repo])
            .spawn()
    };
    let mut children: Vec<std::process::Child> = Vec::new();
    let (mut kills, mut seed) = (0u32, now() as u64 | 1);
    let (mut armed, mut done_at_last_cut) = (true, 0);
    let end = std::time::Instant::now() + Duration::from_secs(20);
    for round in 0.. {
        if std::time::Instant::now() >= end || round > 200 {
            break;
        }
        children.retain_mut(|c| c.try_wait().ok().flatten().is_none());
        while children.len() < 30 {
            children.push(worker());
        }
        // xorshift: no dependency for a coin.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // A random worker is killed each round; and within the round, the
        // lease holder as soon as its command runs, when a slot has
        // finished since the last such kill (so such kills never come
        // three in a row, which would send the schedule into its minute
        // of backoff).
        let mut c = children.swap_remove((seed % children.len() as u64) as usize);
        if c.kill().is_ok() && c.wait().unwrap().signal() == Some(9) {
            kills += 1;
        }
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(20));
            let done = lines(&out).len();
            if done > done_at_last_cut {
                armed = true;
            }
            let claimed: Option<i64> = r
                .conn()
                .query_row("SELECT claimed FROM bo_schedule", [], |row| row.get(0))
                .unwrap();
            let holder = r.lease().current.pid as u32;
            if !armed || claimed.is_none() {
                continue;
            }
            if let Some(i) = children.iter().position(|c| c.id() == holder) {
                let mut c = children.swap_remove(i);
                if c.kill().is_ok() && c.wait().unwrap().signal() == Some(9) {
                    kills += 1;
                    armed = false;
                    done_at_last_cut = done;
                }
            }
        }
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Settle: workers until no claim is left (a killed run is retried a
    // second later), at most 20 s.
    let settled = wait_until(Duration::from_secs(20), || {
        Cmd::backoffice().args(["run", "--nodelay", &repo]).output();
        let claimed: Option<i64> = r
            .conn()
            .query_row("SELECT claimed FROM bo_schedule", [], |row| row.get(0))
            .unwrap();
        claimed.is_none()
    });
    let state = schedule(&r, &["show", "tick"]);
    assert!(settled, "a claim was left: {state}");
    let got = lines(&out);
    assert!(
        !got.iter().any(|l| l == "overlap"),
        "two commands at once: {got:?}"
    );
    let mut slots: Vec<i64> = got.iter().map(|l| l.parse().unwrap()).collect();
    let ran = slots.len();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), ran, "a slot ran twice: {got:?}");
    assert!(
        ran >= 2 && kills >= 5,
        "too little happened: {ran} slots, {kills} kills\n{state}"
    );
    // How many kills cut a command off (each such slot then ran once).
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let cut = text.matches("killed: the run of the slot").count();
    eprintln!("{ran} slots ran once each; {kills} workers killed, {cut} of them mid-command");
    assert!(cut >= 1, "no kill cut a command off: {kills} kills\n{text}");
}

/// Each schedule reaches `/metrics` and `status.json`: its next and last
/// slot, missed slots and failures, under the schedule's name.
#[test]
fn each_schedule_is_in_metrics_and_status_json() {
    let env = Env::new();
    let r = env.repo("r.db", 60);
    schedule(
        &r,
        &[
            "add",
            "nightly",
            "--cron",
            "30 2 * * *",
            "--command",
            "true",
        ],
    );
    let next = next_slot(&r, "nightly");
    let token = Cmd::backoffice()
        .args(["token", r.path.to_str().unwrap()])
        .output()
        .success();
    let token = token
        .split_whitespace()
        .find(|w| w.len() >= 32)
        .unwrap()
        .to_owned();
    let auth = format!("Bearer {token}");
    let get =
        |path: &str| crate::web::cgi(&r.path, "GET", path, &[("HTTP_AUTHORIZATION", &auth)], "").0;
    let metrics = get("/metrics");
    let line = metrics
        .lines()
        .find(|l| {
            l.contains("queue=\"schedule:nightly\"") && l.contains("state=\"next_slot_time\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(line.ends_with(&format!(" {next}")), "{line}");
    let json = get("/r/r/status.json");
    assert!(
        json.contains("schedule nightly: cron \\\"30 2 * * *\\\" UTC, next "),
        "{json}"
    );
}

/// On a PostgreSQL schema (issue 12's several hosts): workers of two hosts
/// race for a schedule every second; each slot's command runs once, never
/// two at once, and the schedule's state is the schema's (`list`,
/// `status`). Every progress write is fenced on the run's term, as all
/// of them are on PostgreSQL.
#[test]
fn on_postgresql_workers_of_two_hosts_run_each_slot_once() {
    let Some(db) = crate::pg::database() else {
        return;
    };
    let env = Env::new();
    let url = db.url("sched");
    let out = env.path("slots.txt");
    let lock = env.path("slots.lock");
    let cmd = format!(
        "flock -n {lock} sh -c 'sleep 0.2; echo \"$BACKOFFICE_SLOT\" >> {out}' || echo overlap >> {out}",
        lock = lock.display(),
        out = out.display()
    );
    let bo = |args: &[&str]| Cmd::backoffice().args(args).output().success();
    bo(&["setting", &url, "backoffice-lease-time", "1"]);
    let added = bo(&[
        "schedule",
        &url,
        "add",
        "tick",
        "--every",
        "1s",
        "--command",
        &cmd,
    ]);
    assert!(added.contains("every 1s"), "{added}");
    assert!(!added.contains(crate::pg::PASSWORD), "{added}");
    // And an event schedule: its events are published in the schema.
    bo(&[
        "schedule", &url, "add", "beat", "--every", "1s", "--event", "beat",
    ]);
    let mut children: Vec<std::process::Child> = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(8);
    let mut round = 0;
    while std::time::Instant::now() < end && round < 100 {
        round += 1;
        children.retain_mut(|c| c.try_wait().ok().flatten().is_none());
        while children.len() < 10 {
            let host = if children.len() % 2 == 0 {
                "host-a"
            } else {
                "host-b"
            };
            children.push(
                Cmd::backoffice()
                    .args(["run", &url])
                    .env("BACKOFFICE_HOST_ID", host)
                    .spawn(),
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    for mut c in children {
        let _ = c.wait();
    }
    let got = lines(&out);
    assert!(!got.iter().any(|l| l == "overlap"), "two at once: {got:?}");
    let mut slots: Vec<i64> = got.iter().map(|l| l.parse().unwrap()).collect();
    let ran = slots.len();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), ran, "a slot ran twice: {got:?}");
    assert!(ran >= 2, "only {ran} slots ran: {got:?}");
    let list = bo(&["schedule", &url, "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let last = v[1]["last_slot"].as_i64().unwrap_or(0);
    assert_eq!(last, *slots.last().unwrap(), "{list}");
    let status = bo(&["status", &url]);
    assert!(status.contains("schedule tick: every 1s"), "{status}");
    let beats: i64 = db
        .connect()
        .query_one(
            "SELECT count(*) FROM sched.bo_event WHERE kind = 'beat'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(beats >= 1, "no event published:\n{status}");
}
