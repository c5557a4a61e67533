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
            vec!["add", "x", "--every", "10s", "--command", "true"],
            "from 1m to 366d",
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
