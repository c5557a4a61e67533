//! Replication through the real binary: `peer add|list|sync|remove`, the
//! `replicate` task in a normal run, and a copy killed half-way.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::harness::{AppRepo, Cmd, Env, wait_until};

fn fill(repo: &AppRepo, rows: usize) {
    let c = Connection::open(&repo.path).unwrap();
    c.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT); BEGIN")
        .unwrap();
    for i in 0..rows {
        c.execute(
            "INSERT INTO t(v) VALUES (?1)",
            [format!("{i} {}", "x".repeat(1000))],
        )
        .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
}

/// Rows in a replica, after checking its integrity.
fn replica_rows(p: &Path) -> i64 {
    let c = Connection::open_with_flags(p, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "{}", p.display());
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn peers_are_managed_and_a_run_copies_when_due() {
    let env = Env::new();
    let repo = AppRepo::new(&env, "app.db");
    Connection::open(&repo.path)
        .unwrap()
        .query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    fill(&repo, 200);
    let target = env.path("backup/app.db");
    let err = Cmd::backoffice()
        .args(["peer", "add", "relative.db", "-R", repo.r()])
        .output()
        .failure();
    assert!(err.contains("absolute"), "{err}");
    repo.bo(&["peer", "add", target.to_str().unwrap()]);
    // The folder is missing (an unmounted share): the run fails, retries
    // later, and says why.
    let out = Cmd::backoffice()
        .args(["run", "--nolease", repo.r()])
        .output();
    assert!(!target.exists());
    let status = repo.bo(&["status"]);
    assert!(
        status.contains("failed 1 time(s) in a row"),
        "{status}\n{}",
        out.stderr()
    );
    std::fs::create_dir(env.path("backup")).unwrap();
    repo.bo(&["peer", "sync"]);
    assert_eq!(replica_rows(&target), 200);
    let list = repo.bo(&["peer", "list"]);
    assert!(
        list.contains("last copy") && !list.contains("failed"),
        "{list}"
    );
    // Due again after the interval: a normal run makes the next generation.
    repo.bo(&["setting", "replicate-interval", "10"]);
    fill(&repo, 50);
    let c = Connection::open(&repo.path).unwrap();
    c.execute("UPDATE bo_peer SET last_ok = last_ok - 11", [])
        .unwrap();
    Cmd::backoffice()
        .args(["run", "--nolease", repo.r()])
        .output()
        .success();
    assert_eq!(replica_rows(&target), 250);
    assert_eq!(replica_rows(&env.path("backup/app.db.1")), 200);
    let status = repo.bo(&["status"]);
    assert!(status.contains("peer 1"), "{status}");
    repo.bo(&["peer", "remove", "1"]);
    assert!(target.exists(), "removing a peer leaves its replicas");
}

#[test]
fn a_copy_killed_half_way_leaves_the_previous_replica_whole() {
    let env = Env::new();
    let repo = AppRepo::new(&env, "app.db");
    Connection::open(&repo.path)
        .unwrap()
        .query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    fill(&repo, 3000);
    let dir = env.path("backup");
    std::fs::create_dir(&dir).unwrap();
    let target = dir.join("app.db");
    repo.bo(&["peer", "add", target.to_str().unwrap()]);
    repo.bo(&["peer", "sync"]);
    assert_eq!(replica_rows(&target), 3000);
    fill(&repo, 1000);
    // Slow the copy right down: one page per step, 5 ms apart.
    repo.bo(&["setting", "replicate-step-pages", "1"]);
    repo.bo(&["setting", "replicate-step-pause-ms", "5"]);
    let mut child = Cmd::backoffice()
        .args(["peer", "sync", "-R", repo.r()])
        .spawn();
    let partial = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".app.db.partial-")
            })
            .map(|e| e.path())
    };
    assert!(
        wait_until(Duration::from_secs(20), || partial().is_some()),
        "the copy started"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the copy is still running when it is killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The replica is the previous one, whole; the half copy is only the
    // temporary file, beside it.
    assert_eq!(replica_rows(&target), 3000);
    assert!(partial().is_some());
    repo.bo(&["setting", "replicate-step-pages", "256"]);
    repo.bo(&["setting", "replicate-step-pause-ms", "0"]);
    repo.bo(&["peer", "sync"]);
    assert_eq!(replica_rows(&target), 4000);
    assert!(
        partial().is_none(),
        "the next copy removed the dead one's temporary"
    );
    assert_eq!(replica_rows(&dir.join("app.db.1")), 3000);
}
