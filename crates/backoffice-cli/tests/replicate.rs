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
    // Only the application's writes call for a new copy, not the engine's
    // own runs.
    Cmd::backoffice()
        .args(["run", "--nolease", repo.r()])
        .output()
        .success();
    let out = repo.bo(&["peer", "sync"]);
    assert!(out.contains("unchanged"), "{out}");
    fill(&repo, 1);
    let out = repo.bo(&["peer", "sync"]);
    assert!(out.contains("bytes in"), "{out}");
    assert_eq!(replica_rows(&target), 251);
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
    // The replica is the previous one, whole, and the copy's guard removed
    // the half-written temporary file.
    assert_eq!(replica_rows(&target), 3000);
    assert!(
        wait_until(Duration::from_secs(5), || partial().is_none()),
        "no partial file is left"
    );
    // Without a guard (a killed guard too), the next copy removes it.
    let stale = dir.join(".app.db.partial-999999999");
    std::fs::write(&stale, "half a copy").unwrap();
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

#[test]
fn an_http_peer_takes_checked_copies_and_refuses_the_rest() {
    let env = Env::new();
    // The peer: a server that takes replicas into a folder.
    let served = AppRepo::new(&env, "served.db");
    let dir = env.path("replicas");
    std::fs::create_dir(&dir).unwrap();
    let token = "replica-token-0123456789";
    std::fs::write(env.path("token"), format!("{token}\n")).unwrap();
    let srv = crate::web::Server::start(
        &served.path,
        &[
            "--replica-dir",
            dir.to_str().unwrap(),
            "--replica-token-file",
            env.path("token").to_str().unwrap(),
        ],
        &env,
    );
    // Bad replica flags are refused at start-up, saying which and why.
    std::fs::write(env.path("short"), "too-short\n").unwrap();
    for (args, says) in [
        (
            vec!["--replica-dir", dir.to_str().unwrap()],
            "--replica-token-file",
        ),
        (
            vec![
                "--replica-dir",
                env.path("nowhere").to_str().unwrap(),
                "--replica-token-file",
                env.path("token").to_str().unwrap(),
            ],
            "not a folder",
        ),
        (
            vec![
                "--replica-dir",
                dir.to_str().unwrap(),
                "--replica-token-file",
                env.path("short").to_str().unwrap(),
            ],
            "shorter than 16",
        ),
        (
            vec![
                "--replica-dir",
                dir.to_str().unwrap(),
                "--replica-token-file",
                env.path("missing").to_str().unwrap(),
            ],
            "reading --replica-token-file",
        ),
    ] {
        let err = Cmd::backoffice()
            // Bounded, should a bad flag ever be accepted.
            .args(["serve", "--listen", "127.0.0.1:0", "--exit-after", "5"])
            .args(&args)
            .arg(&served.path)
            .output()
            .failure();
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains(token), "the token is never printed");
    }
    // The source.
    let repo = AppRepo::new(&env, "app.db");
    fill(&repo, 300);
    let url = format!("http://{}/replica/app", srv.addr);
    repo.bo(&["peer", "add", &url, "--token", token]);
    let list = repo.bo(&["peer", "list"]);
    assert!(!list.contains(token), "the token is never printed: {list}");
    repo.bo(&["peer", "sync"]);
    assert_eq!(replica_rows(&dir.join("app.db")), 300);
    fill(&repo, 10);
    repo.bo(&["peer", "sync"]);
    assert_eq!(replica_rows(&dir.join("app.db")), 310);
    assert_eq!(replica_rows(&dir.join("app.db.1")), 300);

    // A wrong token and a closed port fail, are retried later, and say why.
    let bad = format!("http://{}/replica/other", srv.addr);
    repo.bo(&["peer", "add", &bad, "--token", "not-the-token-at-all"]);
    repo.bo(&[
        "peer",
        "add",
        "http://127.0.0.1:1/replica/app",
        "--token",
        token,
    ]);
    let out = Cmd::backoffice()
        .args(["peer", "sync", "-R", repo.r()])
        .output();
    assert!(!out.out.status.success());
    assert!(out.stderr().contains("answered 401"), "{}", out.stderr());
    assert!(!dir.join("other.db").exists());
    // A refused push leaves no temporary copy beside the source.
    let left: Vec<String> = std::fs::read_dir(env.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let status = repo.bo(&["status"]);
    assert!(status.contains("answered 401"), "{status}");
    assert!(status.contains("127.0.0.1:1"), "{status}");

    // Not a database, or a cut-off one: refused, and nothing is left.
    let auth = format!("Bearer {token}");
    let junk = crate::web::request(
        &srv.addr,
        "PUT",
        "/replica/junk",
        &[("Authorization", auth.as_str())],
        "this is not an SQLite database, not even close",
    );
    assert_eq!(junk.status, 422, "{junk:?}");
    let half = std::fs::read(dir.join("app.db")).unwrap();
    let half = String::from_utf8_lossy(&half[..half.len() / 2]).into_owned();
    let cut = crate::web::request(
        &srv.addr,
        "PUT",
        "/replica/cut",
        &[("Authorization", auth.as_str())],
        &half,
    );
    assert_eq!(cut.status, 422, "{cut:?}");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with("app.db")),
        "only app's replicas: {names:?}"
    );
    let none = crate::web::request(&srv.addr, "PUT", "/replica/app", &[], "x");
    assert_eq!(none.status, 401);
}

/// The engine's own writes (with a peer, each reads SQLite's write counter)
/// beside another process writing all the time: the database stays whole.
/// Reading the counter once closed a descriptor of the database, which
/// drops this process's POSIX locks behind SQLite's back; this caught it.
#[test]
fn engine_writes_beside_a_busy_writer_never_corrupt_the_database() {
    if !crate::harness::have("python3") {
        return;
    }
    for wal in [true, false] {
        let env = Env::new();
        let repo = AppRepo::new(&env, "app.db");
        if wal {
            Connection::open(&repo.path)
                .unwrap()
                .query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
                .unwrap();
        }
        fill(&repo, 100);
        std::fs::create_dir(env.path("backup")).unwrap();
        repo.bo(&["peer", "add", env.path("backup/app.db").to_str().unwrap()]);
        let stop = env.path("stop");
        let script = format!(
            "import os, sqlite3, time\n\
             c = sqlite3.connect({:?}, timeout=30, isolation_level=None)\n\
             end = time.time() + 60\n\
             n = 0\n\
             while time.time() < end and not os.path.exists({:?}):\n\
             \x20   c.execute(\"INSERT INTO t(v) VALUES ('w')\")\n\
             \x20   n += 1\n\
             \x20   if n == 1: open({:?}, 'w').close()\n\
             \x20   time.sleep(0.001)\n\
             open({:?}, 'w').write(str(n))\n",
            repo.r(),
            stop.to_str().unwrap(),
            env.path("started").to_str().unwrap(),
            env.path("wrote").to_str().unwrap(),
        );
        let mut writer = Cmd::new("python3").args(["-c", &script]).spawn();
        // The engine's writes must meet the writer's: wait until it writes.
        assert!(
            crate::harness::wait_until(Duration::from_secs(30), || env.path("started").exists()),
            "the writer never wrote"
        );
        for _ in 0..15 {
            Cmd::backoffice()
                .args(["run", "--nolease", repo.r()])
                .output()
                .success();
            repo.bo(&["peer", "sync"]);
        }
        assert!(
            writer.try_wait().unwrap().is_none(),
            "the writer stopped before the engine's writes ended (wal={wal})"
        );
        std::fs::write(&stop, "").unwrap();
        crate::harness::wait_child(&mut writer, Duration::from_secs(30), "the writer");
        let wrote: i64 = std::fs::read_to_string(env.path("wrote"))
            .expect("the writer says how many rows it wrote")
            .parse()
            .unwrap();
        let c = Connection::open(&repo.path).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "wal={wal}");
        // Every row the writer committed is there, beside the 100 of `fill`.
        let rows: i64 = c
            .query_row("SELECT count(*) FROM t WHERE v = 'w'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, wrote, "wal={wal}");
        assert!(
            wrote >= 15,
            "the writer wrote while the engine ran: {wrote} rows"
        );
    }
}
