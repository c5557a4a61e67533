//! Maintenance through the real binary: `backoffice maintain --now`, a
//! worker run doing maintenance when due, and `status` showing the results.

use std::time::Duration;

use rusqlite::Connection;

use crate::harness::{AppRepo, Cmd, Env};

fn wal_bytes(app: &AppRepo) -> u64 {
    std::fs::metadata(format!("{}-wal", app.r())).map_or(0, |m| m.len())
}

#[test]
fn maintain_now_truncates_the_wal_and_status_shows_every_step() {
    let env = Env::new();
    let app = AppRepo::new(&env, "app.db");
    // The application: WAL mode, never checkpointing, connection kept open.
    let conn = Connection::open(&app.path).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0")
        .unwrap();
    for _ in 0..50 {
        conn.execute("INSERT INTO app VALUES (randomblob(8000))", [])
            .unwrap();
    }
    assert!(wal_bytes(&app) > 300_000);
    app.bo(&["setting", "maintenance-wal-limit", "100000"]);

    let before = crate::harness::now();
    let out = app.bo(&["maintain", "--now"]);
    let after = crate::harness::now();
    let lines: Vec<&str> = out.lines().collect();
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["optimize", "checkpoint", "vacuum", "check", "retention"],
        "{out}"
    );
    assert!(
        lines[1].contains(" ok ") && lines[1].contains("→ 0 B in "),
        "{out}"
    );
    assert!(lines[3].contains("ok in "), "{out}");
    assert!(wal_bytes(&app) < 20_000, "{}", wal_bytes(&app));
    // The application's data is all there.
    let n: i64 = conn
        .query_row("SELECT count(*) FROM app", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 50);

    let st = app.bo(&["status"]);
    for step in ["optimize", "checkpoint", "vacuum", "check", "retention"] {
        assert!(
            st.contains(&format!("  maintenance: {step}: moments ago: ")),
            "{st}"
        );
    }
    assert!(
        st.contains("maintenance: check: moments ago: ok in "),
        "{st}"
    );
    // In WAL mode the WAL is looked at again 10 minutes after the run (the
    // words say "in 9 minutes" once a second has passed, so the time itself
    // is checked, from the JSON).
    assert!(st.contains("  maintenance 2"), "{st}");
    let v: serde_json::Value = serde_json::from_str(&app.bo(&["status", "--json"])).unwrap();
    let due = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "maintenance")
        .unwrap_or_else(|| panic!("no maintenance task: {v}"))["due"]["at"]
        .as_i64()
        .unwrap_or_else(|| panic!("maintenance is due at a time: {v}"));
    assert!(
        (before + 600..=after + 600).contains(&due),
        "due {} s after the run, not 600: {v}",
        due - before
    );
    let gauges = v["gauges"].as_array().unwrap();
    let gauge = |state: &str| {
        gauges
            .iter()
            .find(|g| g["queue"] == "maintenance" && g["state"] == state)
            .unwrap_or_else(|| panic!("no maintenance {state} gauge: {gauges:?}"))["value"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(gauge("check-failed"), 0);
    assert!(gauge("page-count") > 50);
    assert!(gauge("wal-bytes") < 20_000);

    // Without --now, nothing is due again at once.
    let out = app.bo(&["maintain"]);
    assert!(
        out.lines().all(|l| l.contains(" -      not due; next in ")),
        "{out}"
    );
}

#[test]
fn a_worker_run_does_maintenance_when_due() {
    let env = Env::new();
    let app = AppRepo::new(&env, "app.db");
    // Large enough to be analyzed (see `maintain::OPTIMIZE_MIN_PAGES`).
    rusqlite::Connection::open(&app.path)
        .unwrap()
        .execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
             INSERT INTO app(x) SELECT hex(randomblob(40)) FROM n;",
        )
        .unwrap();
    let log = env.path("run.log");
    let run = || {
        Cmd::backoffice()
            .args([
                "run",
                "--nolease",
                "--logfile",
                log.to_str().unwrap(),
                app.r(),
            ])
            .output()
            .success();
        std::fs::read_to_string(&log).unwrap_or_default()
    };
    // Nothing has run here: nothing is due, no worker would start.
    let v: serde_json::Value = serde_json::from_str(&app.bo(&["status", "--json"])).unwrap();
    assert_eq!(v["next_due"]["kind"], "never", "{v}");
    assert!(app.bo(&["status"]).contains("maintenance: not run yet"));

    // The first worker run (cron, or one started for other work) does it:
    // optimize, check and retention did something; the WAL and vacuum
    // looks found nothing to do.
    let text = run();
    assert!(text.contains(" 3 maintenance elapse-time "), "{text}");
    let v: serde_json::Value = serde_json::from_str(&app.bo(&["status", "--json"])).unwrap();
    assert_eq!(v["next_due"]["kind"], "at", "{v}");

    // Not due: a run does no maintenance.
    run();
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);

    // Optimize every second: due again, and only it runs.
    app.bo(&["setting", "maintenance-optimize-interval", "1"]);
    std::thread::sleep(Duration::from_millis(2100));
    let text = run();
    let last = text.lines().last().unwrap();
    assert!(last.contains(" 1 maintenance elapse-time "), "{text}");
    let st = app.bo(&["status"]);
    assert!(
        st.contains("maintenance: optimize: moments ago: optimized in "),
        "{st}"
    );
    assert!(st.contains("maintenance: check: "), "{st}");
}
