//! Issue 12: PostgreSQL, several hosts.
//!
//! For now these tests prove the harness (`tests/pg.rs`) and the client the
//! PostgreSQL store will use: a real server of the tests' own, real client
//! sessions. The row locks the lease will rest on serialise two sessions;
//! a terminated session fails clearly and a new one works; the clock is
//! the server's.

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::pg;

/// Every wait in these tests gives up after this long (a loaded machine is
/// slow, but never this slow).
const DEADLINE: Duration = Duration::from_secs(20);

/// A lease-like row, locked `FOR UPDATE` by one session: a second session's
/// `FOR UPDATE` waits (the server says so in `pg_stat_activity`) until the
/// first commits, and then sees the first one's write. This ordering is
/// what the PostgreSQL lease's takeover and fencing will rely on.
#[test]
fn two_sessions_serialise_on_select_for_update_of_the_lease_row() {
    let Some(db) = pg::database() else { return };
    let mut setup = db.connect();
    setup
        .batch_execute(
            "CREATE SCHEMA repo1;
             CREATE TABLE repo1.bo_lease(name text PRIMARY KEY, term bigint NOT NULL, holder text);
             INSERT INTO repo1.bo_lease VALUES ('backoffice', 0, NULL);",
        )
        .unwrap();

    let mut first = db.connect();
    let first_pid: i32 = first
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let mut tx1 = first.transaction().unwrap();
    let row = tx1
        .query_one(
            "SELECT term FROM repo1.bo_lease WHERE name = 'backoffice' FOR UPDATE",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);

    // The second session, in its own thread, reports its backend pid, then
    // blocks on the same row; lock_timeout bounds the wait should the
    // first session never commit.
    let mut second = db.connect();
    let (tx_pid, rx_pid) = mpsc::channel();
    let (tx_got, rx_got) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let pid: i32 = second
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        tx_pid.send(pid).unwrap();
        let mut tx2 = second.transaction().unwrap();
        tx2.batch_execute("SET LOCAL lock_timeout = '20s'").unwrap();
        let row = tx2
            .query_one(
                "SELECT term, holder FROM repo1.bo_lease WHERE name = 'backoffice' FOR UPDATE",
                &[],
            )
            .unwrap();
        let seen: (i64, Option<String>) = (row.get(0), row.get(1));
        tx_got.send(seen.clone()).unwrap();
        tx2.commit().unwrap();
        seen
    });
    let pid = rx_pid.recv_timeout(DEADLINE).expect("second session's pid");

    // Wait, boundedly, until the server shows the second session waiting
    // on a lock the first holds: from then on its attempt is provably
    // behind the first. Should it get the row instead, it reports so and
    // ends (its row here then disappears).
    let mut observer = db.connect();
    let start = Instant::now();
    loop {
        let row = observer
            .query_opt(
                "SELECT wait_event_type, pg_blocking_pids(pid) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap();
        let (waiting, blockers): (Option<String>, Vec<i32>) = match &row {
            Some(r) => (r.get(0), r.get(1)),
            None => (None, vec![]),
        };
        if waiting.as_deref() == Some("Lock") && blockers.contains(&first_pid) {
            break;
        }
        if let Ok(seen) = rx_got.try_recv() {
            panic!("the second session got the row lock while the first held it (saw {seen:?})");
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the second session never waited on the first's row lock (wait_event_type {waiting:?}, blocked by {blockers:?})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        rx_got.try_recv().is_err(),
        "the second session got the row lock while the first held it"
    );

    // The first session takes the lease over and commits; only then does
    // the second get the row, and it sees the new term.
    tx1.execute(
        "UPDATE repo1.bo_lease SET term = term + 1, holder = 'host-a' WHERE name = 'backoffice'",
        &[],
    )
    .unwrap();
    tx1.commit().unwrap();
    let seen = rx_got
        .recv_timeout(DEADLINE)
        .expect("the second session never got the row after the first committed");
    assert_eq!(seen, (1, Some("host-a".to_string())));
    waiter.join().unwrap();
}

/// A session ended by the server (`pg_terminate_backend`, as an
/// administrator or a restart would) gives its client a clear error, not a
/// hang or a panic; a new session works.
#[test]
fn terminated_session_fails_clearly_and_a_new_session_works() {
    let Some(db) = pg::database() else { return };
    let mut victim = db.connect();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let mut admin = db.connect();
    let terminated: bool = admin
        .query_one("SELECT pg_terminate_backend($1, 10000)", &[&pid])
        .unwrap()
        .get(0);
    assert!(
        terminated,
        "pg_terminate_backend({pid}) did not end the session"
    );

    let err = victim
        .query_one("SELECT 1", &[])
        .expect_err("a query on a terminated session succeeded");
    // What the client sees depends on a race between the server's FATAL
    // message and our write: the FATAL itself (57P01, "terminating
    // connection due to administrator command"), a closed connection, or an
    // I/O error on the socket the server closed ("error communicating with
    // the server: Broken pipe"). Each is an error naming the connection,
    // never a hang; the store will have to treat all three as "connection
    // lost, reconnect".
    let io = std::error::Error::source(&err).is_some_and(|e| e.is::<std::io::Error>());
    let clear =
        err.code() == Some(&postgres::error::SqlState::ADMIN_SHUTDOWN) || err.is_closed() || io;
    assert!(clear, "unclear error on a terminated session: {err:?}");
    eprintln!(
        "a terminated session's error: {err}: {:?}",
        std::error::Error::source(&err)
    );
    // The session is unusable from now on, not half-alive.
    let again = victim.query_one("SELECT 1", &[]);
    assert!(
        again.is_err(),
        "a terminated session answered a second query"
    );
    assert!(
        victim.is_closed(),
        "the client still thinks the session is open"
    );

    let mut fresh = db.connect();
    let one: i32 = fresh.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
}

/// `now()` is the server's clock, fixed for a transaction: the round trip
/// the lease's times (all from the database, never a host's) will make.
#[test]
fn the_servers_clock_comes_back_through_the_client() {
    let Some(db) = pg::database() else { return };
    let mut c = db.connect();
    let mut tx = c.transaction().unwrap();
    let first: f64 = tx
        .query_one("SELECT extract(epoch from now())::float8", &[])
        .unwrap()
        .get(0);
    // clock_timestamp() moves; now() does not, within a transaction.
    let (again, moving): (f64, f64) = {
        let row = tx
            .query_one(
                "SELECT extract(epoch from now())::float8, extract(epoch from clock_timestamp())::float8",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    tx.commit().unwrap();
    assert_eq!(first, again, "now() changed within one transaction");
    assert!(
        moving > first,
        "clock_timestamp() {moving} is not after now() {first}"
    );
    // The server runs on this machine: its clock is ours, give or take a
    // loaded scheduler (a sanity check that the number is seconds since
    // the epoch, not a timing assertion).
    let local = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (local - first).abs() < 3600.0,
        "the server's now() {first} is far from this machine's clock {local}"
    );
}

// ---- the backoffice on PostgreSQL ----

use crate::harness::{Cmd, Env, wait_until};

/// A PostgreSQL repository for the host example: its own database and
/// schema, the application's table, a short lease and heartbeat, and a
/// journal file the host's task writes `enter`/`exit` lines to.
struct PgRepo {
    db: pg::PgDb,
    url: String,
    schema: String,
    journal: std::path::PathBuf,
}

impl PgRepo {
    fn new(env: &Env, schema: &str, lease: u32, heartbeat: u32) -> Option<PgRepo> {
        let db = pg::database()?;
        let url = db.url(schema);
        let r = PgRepo {
            journal: env.path(&format!("{schema}.journal")),
            db,
            url,
            schema: schema.to_owned(),
        };
        Cmd::host().args(["init", &r.url]).output().success();
        r.set("backoffice-lease-time", &lease.to_string());
        r.set("backoffice-heartbeat", &heartbeat.to_string());
        r.set("host-journal", &r.journal.display().to_string());
        Some(r)
    }

    fn client(&self) -> postgres::Client {
        let mut c = self.db.connect();
        c.batch_execute(&format!("SET search_path TO \"{}\"", self.schema))
            .unwrap();
        c
    }

    fn set(&self, name: &str, value: &str) {
        self.client()
            .execute(
                "INSERT INTO config(name, value, mtime) VALUES ($1, $2, 0)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&name, &value],
            )
            .unwrap();
    }

    fn publish(&self, n: usize) {
        let mut c = self.client();
        for i in 0..n {
            c.execute(
                "INSERT INTO outbox(body) VALUES ($1)",
                &[&format!("item {i}")],
            )
            .unwrap();
        }
    }

    fn pending(&self) -> i64 {
        self.client()
            .query_one("SELECT count(*) FROM outbox WHERE done = 0", &[])
            .unwrap()
            .get(0)
    }

    /// (term, handovers, current pid, current host).
    fn lease(&self) -> (i64, i64, i64, Option<String>) {
        let r = self
            .client()
            .query_one(
                "SELECT term, handovers, cur_pid, cur_host FROM bo_lease WHERE id = 1",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    }

    /// The journal's runs, checked to alternate strictly `enter`, `exit`
    /// of the same pid (pids are per namespace, so two hosts may share
    /// one; two workers at once would show as `enter`, `enter`). Returns
    /// (enter, exit) nanos; a last `enter` without `exit` is allowed when
    /// `open_end`.
    fn runs(&self, open_end: bool) -> Vec<(u128, u128)> {
        let text = std::fs::read_to_string(&self.journal).unwrap_or_default();
        let lines: Vec<(String, u32, u128)> = text
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (
                    f[0].to_owned(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )
            })
            .collect();
        let mut runs = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let (k, pid, t0) = &lines[i];
            assert_eq!(k, "enter", "line {i} of {lines:?}");
            match lines.get(i + 1) {
                Some((k2, pid2, t1)) => {
                    assert!(
                        k2 == "exit" && pid2 == pid,
                        "two workers at once: line {i} {:?} then {:?} (all: {lines:?})",
                        lines[i],
                        lines[i + 1]
                    );
                    runs.push((*t0, *t1));
                }
                None => assert!(open_end, "a run never exited: {lines:?}"),
            }
            i += 2;
        }
        runs
    }
}

fn host_at(host: &str) -> Cmd {
    Cmd::host().env("BACKOFFICE_HOST_ID", host)
}

/// Issue 12, items 1–4 and 8, end to end through the commands: a host's
/// own (portable) task runs on a PostgreSQL schema; `setting`, `publish`,
/// `lease` and `status` work on the URL; the lease names the host; the
/// status shows the term, the holder and the clock gap; and the password
/// in the URL is never printed.
#[test]
fn a_hosts_task_runs_on_a_postgresql_schema_through_the_commands() {
    let env = Env::new();
    let Some(r) = PgRepo::new(&env, "tenant_a", 1, 1) else {
        return;
    };
    let out = env.path("out");
    let mut said = String::new();
    said += &Cmd::host()
        .args([
            "setting",
            "-R",
            &r.url,
            "host-outdir",
            out.to_str().unwrap(),
        ])
        .output()
        .success();
    let bad = Cmd::host()
        .args(["setting", "-R", &r.url, "backoffice-lease-time", "soon"])
        .output()
        .failure();
    assert!(bad.contains("backoffice-lease-time"), "{bad}");
    r.publish(3);
    said += &host_at("host-a").args(["run", &r.url]).output().success();
    assert_eq!(r.pending(), 0);
    let files = std::fs::read_dir(&out).unwrap().count();
    assert_eq!(files, 3, "one file per row");
    let (term, _, pid, host) = r.lease();
    assert_eq!((term, pid, host), (1, 0, None), "taken once, released");

    // Events: published through the command, given positions by the worker,
    // read by the host's events task.
    let events = env.path("events.txt");
    r.set("host-events-file", events.to_str().unwrap());
    for title in ["first", "second"] {
        said += &Cmd::host()
            .args([
                "publish",
                "-R",
                &r.url,
                "--no-trigger",
                "--kind",
                "note",
                "--title",
                title,
            ])
            .output()
            .success();
    }
    said += &host_at("host-a").args(["run", &r.url]).output().success();
    assert_eq!(
        std::fs::read_to_string(&events).unwrap(),
        "1 note first\n2 note second\n"
    );

    let st = host_at("host-a")
        .args(["status", &r.url])
        .output()
        .success();
    said += &st;
    assert!(st.contains("term:        2"), "{st}");
    assert!(st.contains("PostgreSQL"), "{st}");
    assert!(st.contains("db clock:"), "{st}");
    assert!(st.contains("task outbox: nothing due"), "{st}");
    let json = Cmd::host()
        .args(["status", "--json", &r.url])
        .output()
        .success();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["cluster"]["term"], 2);
    assert!(
        v["cluster"]["clock_gap"].as_i64().unwrap().abs() <= 2,
        "{json}"
    );
    said += &json;
    said += &Cmd::host().args(["lease", &r.url]).output().success();
    said += &Cmd::host().args(["trigger", &r.url]).output().success();

    // A command that works on SQLite files only says so, password hidden.
    let e = Cmd::host()
        .args(["peer", "list", "-R", &r.url])
        .output()
        .failure();
    assert!(e.contains("PostgreSQL repository"), "{e}");
    said += &e;
    assert!(
        !said.contains(pg::PASSWORD),
        "a password was printed: {said}"
    );
    assert!(said.contains("***"), "{said}");
}

/// A command for `host` as a process of its own "host": its host id, and
/// (when `ns`) its own PID namespace, so that no pid is visible across
/// hosts and only the heartbeat tells whether a holder lives.
fn on_host(host: &str, ns: bool, args: &[&str]) -> Cmd {
    let c = if ns {
        Cmd::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(crate::harness::host_bin())
    } else {
        Cmd::host()
    };
    c.args(args).env("BACKOFFICE_HOST_ID", host)
}

/// Issue 12, tests: 30 concurrent workers from 3 hosts on one repository,
/// in repeated bursts with a short lease (1 s). Each host runs in a PID
/// namespace of its own where permitted. The journal proves that never two
/// worked at once, and that runs began at least a lease time apart.
#[test]
fn thirty_workers_from_three_hosts_never_work_at_once() {
    let env = Env::new();
    let Some(r) = PgRepo::new(&env, "burst", 1, 1) else {
        return;
    };
    let ns = crate::liveness::pid_namespaces();
    r.set("host-work-ms", "150");
    for burst in 0..3 {
        r.publish(5);
        let mut kids = Vec::new();
        for h in ["host-a", "host-b", "host-c"] {
            for _ in 0..10 {
                kids.push(on_host(h, ns, &["run", &r.url]).spawn());
            }
        }
        for mut k in kids {
            let st = crate::harness::wait_child(&mut k, Duration::from_secs(60), "a worker");
            assert!(st.success(), "burst {burst}: a worker failed");
        }
    }
    assert_eq!(r.pending(), 0, "nothing left behind");
    let runs = r.runs(false);
    assert!(runs.len() >= 3, "{runs:?}");
    for w in runs.windows(2) {
        let gap_ms = (w[1].0 - w[0].0) / 1_000_000;
        // Runs are spaced by the lease (1 s, on the database's clock, in
        // whole seconds); the journal's times are taken a little after each
        // take-over, so allow that much.
        assert!(gap_ms >= 900, "runs began {gap_ms} ms apart: {runs:?}");
    }
    let (term, ..) = r.lease();
    assert_eq!(term as usize, runs.len(), "one term per run that worked");
}

/// Issue 12, tests: a holder SIGKILLed mid-batch on one host; a worker on
/// another host waits on deck and takes over once the dead holder's
/// heartbeat has run out (heartbeat 1 s, so 4 s), within a lease time plus
/// that; the batch is done, nothing lost, and the takeover counts as a
/// hand-over.
#[test]
fn a_killed_holder_is_taken_over_by_another_host_after_its_heartbeat() {
    let env = Env::new();
    let Some(r) = PgRepo::new(&env, "killed", 1, 1) else {
        return;
    };
    r.set("host-work-ms", "60000");
    r.publish(4);
    let mut a = on_host("host-a", false, &["run", &r.url]).spawn();
    assert!(
        wait_until(DEADLINE, || std::fs::read_to_string(&r.journal)
            .is_ok_and(|t| t.contains("enter"))),
        "host-a never started"
    );
    let (_, _, pid_a, host) = r.lease();
    assert_eq!(host.as_deref(), Some("host-a"));
    a.kill().unwrap();
    a.wait().unwrap();
    let killed = Instant::now();
    r.set("host-work-ms", "0");
    let b = on_host("host-b", false, &["run", &r.url])
        .output()
        .success();
    let took = killed.elapsed();
    assert_eq!(r.pending(), 0, "host-b did the batch: {b}");
    let (term, handovers, pid, _) = r.lease();
    assert_eq!((term, handovers, pid), (2, 1, 0), "pid_a {pid_a}");
    // Lease 1 s + heartbeat grace 4 s, plus the database's whole seconds
    // and a loaded machine; a worker that ignored the heartbeat would have
    // taken over at once, one that waited for nothing would never finish.
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took <= Duration::from_secs(15), "{took:?}");
}

/// Issue 12, item 4: a holder SIGSTOPped past its heartbeat; another host
/// takes the lease over and delivers the batch; then the paused one is
/// continued. Its fenced progress writes are refused (term 1, the lease
/// says 2): it stops, commits nothing, and every row is recorded once,
/// by the worker that holds the lease.
#[test]
fn a_paused_holder_is_fenced_out_after_another_host_takes_over() {
    let env = Env::new();
    let Some(r) = PgRepo::new(&env, "paused", 1, 1) else {
        return;
    };
    let log = env.path("paused.log");
    r.set("backoffice-logfile", log.to_str().unwrap());
    r.set("host-fenced-write", "on");
    r.set("host-work-ms", "3000");
    r.publish(3);
    let mut a = on_host("host-a", false, &["run", &r.url]).spawn();
    assert!(
        wait_until(DEADLINE, || std::fs::read_to_string(&r.journal)
            .is_ok_and(|t| t.contains("enter"))),
        "host-a never started"
    );
    let pid = rustix::process::Pid::from_raw(a.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    // host-b waits on deck until host-a's heartbeat has run out, then
    // takes over and delivers.
    on_host("host-b", false, &["run", &r.url])
        .output()
        .success();
    assert_eq!(r.pending(), 0);
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    let st = crate::harness::wait_child(&mut a, DEADLINE, "the paused worker");
    assert!(st.success());
    let rows: Vec<(i64, i64)> = r
        .client()
        .query("SELECT id, term FROM host_delivered ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![(1, 2), (2, 2), (3, 2)],
        "each row once, by term 2"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("fenced"),
        "the paused worker's refusal is logged: {text}"
    );
    let (term, handovers, ..) = r.lease();
    assert_eq!((term, handovers), (2, 1));
}

/// Issue 12, item 5: two publishers whose transactions commit in the
/// reverse order of their ids. (The schema is called `order`, an SQL
/// keyword: every statement must quote it.) The event that commits first gets the
/// first position, the other one the next when it has committed: the
/// events task, which follows positions, reads both, the later-committed
/// one after, and none is skipped.
#[test]
fn events_committed_out_of_id_order_are_never_skipped() {
    let env = Env::new();
    let Some(r) = PgRepo::new(&env, "order", 1, 1) else {
        return;
    };
    let events = env.path("events.txt");
    r.set("host-events-file", events.to_str().unwrap());
    let ev = |title: &str| backoffice::events::Event {
        kind: "note".into(),
        title: title.into(),
        body: String::new(),
        url: None,
        author: None,
        time: None,
    };
    let mut c1 = r.client();
    let mut c2 = r.client();
    let mut t1 = c1.transaction().unwrap();
    let id1 = backoffice::pg::publish(&mut t1, &r.schema, &ev("slow")).unwrap();
    let mut t2 = c2.transaction().unwrap();
    let id2 = backoffice::pg::publish(&mut t2, &r.schema, &ev("fast")).unwrap();
    assert!(id1 < id2);
    t2.commit().unwrap();
    // A worker now sees only the later id.
    on_host("host-a", false, &["run", &r.url])
        .output()
        .success();
    assert_eq!(std::fs::read_to_string(&events).unwrap(), "1 note fast\n");
    t1.commit().unwrap();
    // The check sees an event without a position, and a worker reads it.
    let said = on_host("host-b", false, &["trigger", &r.url])
        .output()
        .success();
    assert!(said.contains("work is due"), "{said}");
    assert!(
        wait_until(DEADLINE, || std::fs::read_to_string(&events)
            .is_ok_and(|t| t.lines().count() == 2)),
        "the worker started by trigger never read the second event"
    );
    assert_eq!(
        std::fs::read_to_string(&events).unwrap(),
        "1 note fast\n2 note slow\n"
    );
}

/// Issue 12, tests: the worker's sessions terminated mid-run
/// (`pg_terminate_backend`, as an administrator or a failover would). The
/// task fails with PostgreSQL's reason in the run log; the worker records
/// the run and releases the lease on a new session (so the next worker
/// need not wait for the heartbeat: no hand-over); nothing is lost, and
/// the next worker does the batch.
#[test]
fn a_worker_whose_session_is_terminated_fails_clearly_and_nothing_is_lost() {
    let env = Env::new();
    let Some(r) = PgRepo::new(&env, "terminated", 1, 1) else {
        return;
    };
    let log = env.path("terminated.log");
    r.set("backoffice-logfile", log.to_str().unwrap());
    r.set("host-work-ms", "2000");
    r.publish(4);
    let mut a = on_host("host-a", false, &["run", &r.url]).spawn();
    assert!(
        wait_until(DEADLINE, || std::fs::read_to_string(&r.journal)
            .is_ok_and(|t| t.contains("enter"))),
        "host-a never started"
    );
    let killed: i64 = r
        .client()
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'backoffice'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(killed >= 1, "the worker's sessions were found");
    let st = crate::harness::wait_child(&mut a, DEADLINE, "the worker");
    assert!(st.success());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("outbox") && text.contains("PostgreSQL"),
        "the failure is in the run log with PostgreSQL's reason: {text}"
    );
    assert_eq!(r.pending(), 4, "nothing was marked done by the failed run");
    let (term, handovers, pid, _) = r.lease();
    assert_eq!(
        (term, handovers, pid),
        (1, 0, 0),
        "released, not left to lapse"
    );
    on_host("host-b", false, &["run", &r.url])
        .output()
        .success();
    assert_eq!(r.pending(), 0, "the next worker did the batch");
}

/// Measurement, not a check (run by hand, figures in the README): the
/// hand-over time after a holder dies. A holder on host-a is SIGKILLed
/// mid-run while a worker of host-b waits on deck; the time from the kill
/// to host-b's `enter`, over 5 rounds, with `L` = 1 s and a 1 s heartbeat
/// (so a renewal vouches for 4 s).
///
/// `cargo test -p backoffice-cli --test integration -- --ignored --nocapture measure_handover`
#[test]
#[ignore]
fn measure_handover_after_a_holder_dies() {
    let env = Env::new();
    let Some(r) = PgRepo::new(&env, "handover", 1, 1) else {
        return;
    };
    let mut times = Vec::new();
    for round in 0..5 {
        let _ = std::fs::remove_file(&r.journal);
        r.set("host-work-ms", "60000");
        r.publish(1);
        let mut a = on_host("host-a", false, &["run", &r.url]).spawn();
        assert!(wait_until(DEADLINE, || std::fs::read_to_string(&r.journal)
            .is_ok_and(|t| t.contains("enter"))));
        r.set("host-work-ms", "0");
        let mut b = on_host("host-b", false, &["run", &r.url]).spawn();
        // host-b is on deck once the lease names it there.
        assert!(wait_until(DEADLINE, || r
            .client()
            .query_one("SELECT next_pid FROM bo_lease", &[])
            .unwrap()
            .get::<_, i64>(0)
            > 0));
        a.kill().unwrap();
        a.wait().unwrap();
        let t0 = Instant::now();
        assert!(wait_until(Duration::from_secs(30), || {
            std::fs::read_to_string(&r.journal).is_ok_and(|t| t.matches("enter").count() == 2)
        }));
        let took = t0.elapsed();
        crate::harness::wait_child(&mut b, DEADLINE, "host-b");
        eprintln!("round {round}: hand-over in {took:?}");
        times.push(took);
    }
    times.sort();
    eprintln!(
        "hand-over after a holder dies (L = 1 s, heartbeat 1 s): median {:?}, min {:?}, max {:?}",
        times[2], times[0], times[4]
    );
}

/// Issue 12, contract: the store seam behaves the same on both stores. One
/// body of checks runs against an SQLite repository and a PostgreSQL
/// schema: portable statements and typed reads, a failing write rolled
/// back whole, `config` values, a fenced write refused once the lease's
/// term moved (and accepted with the new term), and the event log read
/// after a cursor.
#[test]
fn the_store_contract_holds_on_sqlite_and_on_postgresql() {
    use backoffice::Db;
    use backoffice::db::DbError;

    /// Moves the lease's term, as a takeover would.
    type SetTerm<'a> = &'a dyn Fn(u64);
    /// Publishes an event and makes it readable (on PostgreSQL: a worker
    /// gives it its position).
    type Publish<'a> = &'a dyn Fn(&str);

    fn contract(db: Db<'_>, set_term: SetTerm<'_>, publish: Publish<'_>) {
        let store = db.store();
        db.execute(
            "CREATE TABLE c_items(id BIGINT PRIMARY KEY, name TEXT, n BIGINT)",
            &[],
        )
        .unwrap();
        db.write(None, |db| {
            db.execute(
                "INSERT INTO c_items VALUES (?1, ?2, ?3)",
                &[1i64.into(), "one".into(), Option::<i64>::None.into()],
            )
        })
        .unwrap();
        let row = db
            .query_opt(
                "SELECT id, name, n FROM c_items WHERE id = ?1",
                &[1i64.into()],
            )
            .unwrap()
            .unwrap();
        assert_eq!(row.int(0).unwrap(), 1, "{store}");
        assert_eq!(row.text(1).unwrap(), "one", "{store}");
        assert_eq!(row.opt_int(2).unwrap(), None, "{store}");
        assert!(row.text(0).is_err(), "{store}: an integer is not text");

        // A write that fails half-way leaves nothing behind.
        let r: Result<(), DbError> = db.write(None, |db| {
            db.execute("INSERT INTO c_items VALUES (2, 'two', 2)", &[])?;
            db.execute("INSERT INTO c_items VALUES (1, 'again', 0)", &[])?;
            Ok(())
        });
        assert!(r.is_err(), "{store}: the duplicate key fails");
        let n = db.query("SELECT id FROM c_items", &[]).unwrap().len();
        assert_eq!(n, 1, "{store}: the failed write was rolled back whole");

        // config
        assert_eq!(db.config_get("c-key").unwrap(), None, "{store}");
        db.config_set("c-key", "v1").unwrap();
        db.config_set("c-key", "v2").unwrap();
        assert_eq!(
            db.config_get("c-key").unwrap().as_deref(),
            Some("v2"),
            "{store}"
        );

        // Fencing: term 5 in the lease; a write on term 4 is refused and
        // rolled back, one on term 5 commits.
        set_term(5);
        let r = db.write(Some(4), |db| {
            db.execute("INSERT INTO c_items VALUES (3, 'late', 3)", &[])
        });
        let e = r.unwrap_err();
        assert!(e.is_fenced(), "{store}: {e}");
        assert!(e.to_string().contains("term is 5"), "{store}: {e}");
        db.write(Some(5), |db| {
            db.execute("INSERT INTO c_items VALUES (4, 'current', 4)", &[])
        })
        .unwrap();
        let ids: Vec<i64> = db
            .query("SELECT id FROM c_items ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|r| r.int(0).unwrap())
            .collect();
        assert_eq!(ids, vec![1, 4], "{store}");

        // The event log, after a cursor.
        assert!(
            backoffice::events::after(db, 0, 10).unwrap().is_empty(),
            "{store}"
        );
        publish("a");
        publish("b");
        let evs = backoffice::events::after(db, 0, 10).unwrap();
        let seen: Vec<(i64, String)> = evs.iter().map(|e| (e.eventid, e.title.clone())).collect();
        assert_eq!(seen, vec![(1, "a".into()), (2, "b".into())], "{store}");
        let rest = backoffice::events::after(db, 1, 10).unwrap();
        assert_eq!(rest.len(), 1, "{store}");
        assert_eq!(rest[0].title, "b", "{store}");
    }

    let ev = |title: &str| backoffice::events::Event {
        kind: "note".into(),
        title: title.into(),
        body: String::new(),
        url: None,
        author: None,
        time: None,
    };

    // SQLite.
    let env = Env::new();
    let path = env.path("contract.db");
    rusqlite::Connection::open(&path).unwrap();
    let repo = backoffice::Repo::open(&path).unwrap();
    let conn = repo.conn();
    contract(
        Db::Sqlite(conn),
        &|t| {
            backoffice::repo::config_set(conn, backoffice::LEASE_ROW, &format!("0 0 0 0 term={t}"))
                .unwrap()
        },
        &|title| {
            backoffice::events::publish(conn, &ev(title)).unwrap();
        },
    );

    // PostgreSQL.
    let Some(db) = pg::database() else { return };
    let url = backoffice::pg::PgUrl::parse(&db.url("contract")).unwrap();
    let pc = url.connect().unwrap();
    contract(
        Db::Postgres(&pc),
        &|t| {
            pc.execute("UPDATE bo_lease SET term = ?1", &[(t as i64).into()])
                .unwrap();
        },
        &|title| {
            backoffice::pg::publish(&mut *pc.client(), url.schema(), &ev(title)).unwrap();
            pc.stamp_events(None).unwrap();
        },
    );
}

/// Issue 12, item 7: the after-request check on PostgreSQL keeps its
/// answer in the process. A host that publishes starts a worker on that
/// very request; the requests right after see the worker starting without
/// asking; work another host made (rows inserted from outside, nothing
/// said to this process) is found once the kept answer is a second old,
/// and a worker started for it: within a few requests, not never.
#[test]
fn the_cached_check_starts_a_worker_at_once_after_publishing_and_finds_others_work() {
    let env = Env::new();
    let Some(r) = PgRepo::new(&env, "cached", 1, 1) else {
        return;
    };
    // This process publishes: the first request starts a worker.
    let out = host_at("host-a")
        .args(["pg-requests", &r.url, "3", "0", "publish"])
        .output()
        .success();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("started worker"), "{out}");
    assert!(lines[1].contains("just started"), "{out}");
    assert!(
        wait_until(DEADLINE, || r.pending() == 0),
        "the worker did the work"
    );
    // Another host's work: inserted behind this process's back while it
    // serves 40 requests 100 ms apart (4 s). The first answer ("nothing
    // due") is kept for at most a second; a later request must find the
    // work and start a worker.
    let mut host = host_at("host-b")
        .args(["pg-requests", &r.url, "40", "100"])
        .spawn_piped();
    std::thread::sleep(Duration::from_millis(300));
    r.publish(1);
    let st = crate::harness::wait_child(&mut host, Duration::from_secs(30), "the host");
    assert!(st.success());
    let mut text = String::new();
    use std::io::Read;
    host.stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let first_start = text
        .lines()
        .position(|l| l.contains("started worker"))
        .unwrap_or_else(|| panic!("no worker was started for the other host's work: {text}"));
    assert!(
        text.lines().next().unwrap().contains("nothing is due"),
        "{text}"
    );
    assert!(first_start >= 1, "{text}");
    assert!(
        wait_until(DEADLINE, || r.pending() == 0),
        "the worker did the other host's work"
    );
}

/// Measurement, not a check (figures in the README): the after-request
/// check on a PostgreSQL repository, nothing due, amortised over 10,000
/// requests made back to back by one host process with the cached check
/// (`PgTrigger`), and its worst single call (a refresh: one statement on a
/// Unix socket, then the host's tasks' `due`).
///
/// `cargo test --release -p backoffice-cli --test integration -- --ignored --nocapture measure_pg_check`
#[test]
#[ignore]
fn measure_pg_check_amortised() {
    let env = Env::new();
    let Some(r) = PgRepo::new(&env, "check", 60, 5) else {
        return;
    };
    for round in 0..3 {
        let out = host_at("host-a")
            .args(["pg-requests", &r.url, "10000", "0"])
            .output()
            .success();
        let last = out.lines().last().unwrap_or_default().to_owned();
        assert!(out.lines().filter(|l| l.contains("started worker")).count() == 0);
        eprintln!("round {round}: {last}");
    }
}

/// Issue 12, item 1: `run` sweeps many PostgreSQL schemas (one session per
/// database, shared by its schemas): only the schema with work due gets a
/// worker, the others' leases are not touched; a URL that cannot be used
/// fails alone, with its password hidden, and the sweep says so in its
/// exit status; `--poll` sweeps them too.
#[test]
fn a_sweep_services_only_the_schemas_with_work_due() {
    let Some(db) = pg::database() else { return };
    let urls: Vec<String> = ["s1", "s2", "s3"].iter().map(|s| db.url(s)).collect();
    for u in &urls {
        Cmd::host().args(["init", u]).output().success();
    }
    let mut c = db.connect();
    c.batch_execute("INSERT INTO s2.outbox(body) VALUES ('a'), ('b')")
        .unwrap();
    let out = Cmd::host().args(["run"]).args(&urls).output().success();
    let term = |c: &mut postgres::Client, s: &str| -> i64 {
        c.query_one(&format!("SELECT term FROM {s}.bo_lease"), &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(term(&mut c, "s1"), 0, "{out}");
    assert_eq!(term(&mut c, "s2"), 1, "{out}");
    assert_eq!(term(&mut c, "s3"), 0, "{out}");
    let left: i64 = c
        .query_one("SELECT count(*) FROM s2.outbox WHERE done = 0", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);

    // A bad URL among good ones.
    let bad = db.url("Not_Valid");
    c.batch_execute("INSERT INTO s3.outbox(body) VALUES ('c')")
        .unwrap();
    let done = Cmd::host().args(["run", &urls[0], &bad, &urls[2]]).output();
    let err = done.failure();
    assert!(err.contains("schema"), "{err}");
    assert!(!err.contains(pg::PASSWORD), "{err}");
    assert_eq!(term(&mut c, "s3"), 1, "the good ones were serviced: {err}");

    // --poll: two sweeps, work published before the first.
    c.batch_execute("INSERT INTO s1.outbox(body) VALUES ('d')")
        .unwrap();
    Cmd::host()
        .args(["run", "--poll", "1", "--sweeps", "2"])
        .args(&urls)
        .output()
        .success();
    assert_eq!(term(&mut c, "s1"), 1);
}

/// Measurement, not a check (figures in the README): one `backoffice run`
/// sweep over 1,000 PostgreSQL schemas of one database with nothing due
/// (the binary's tasks), three times; the schemas are made first.
///
/// `cargo test --release -p backoffice-cli --test integration -- --ignored --nocapture measure_pg_sweep`
#[test]
#[ignore]
fn measure_pg_sweep_of_1000_schemas() {
    let Some(db) = pg::database() else { return };
    let n = 1000;
    let urls: Vec<String> = (0..n).map(|i| db.url(&format!("t{i:04}"))).collect();
    let t0 = Instant::now();
    for u in &urls {
        backoffice::pg::PgUrl::parse(u).unwrap().connect().unwrap();
    }
    eprintln!("made {n} schemas in {:?}", t0.elapsed());
    for round in 0..3 {
        let t0 = Instant::now();
        Cmd::backoffice().arg("run").args(&urls).output().success();
        eprintln!("round {round}: swept {n} schemas in {:?}", t0.elapsed());
    }
}

/// Issue 12, tests: the database restarted under a working holder (a
/// server of this test's own, so no other test sees it go). The holder's
/// task fails with PostgreSQL's reason in the run log and the worker ends
/// without hanging; nothing is lost: once the server is back, a worker on
/// another host does the whole batch.
#[test]
fn the_database_restarted_mid_run_loses_nothing() {
    let Some(mut server) = pg::PgServer::start() else {
        return;
    };
    server
        .connect("postgres")
        .batch_execute("CREATE DATABASE app")
        .unwrap();
    let url = format!(
        "postgresql://{}:{}@localhost/app?host={}&schema=restart",
        pg::SUPERUSER,
        pg::PASSWORD,
        server.socket_dir().display()
    );
    let env = Env::new();
    let log = env.path("restart.log");
    let journal = env.path("restart.journal");
    Cmd::host().args(["init", &url]).output().success();
    let set = |server: &pg::PgServer, k: &str, v: &str| {
        let mut c = server.connect("app");
        c.execute(
            "INSERT INTO restart.config(name, value, mtime) VALUES ($1, $2, 0)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            &[&k, &v],
        )
        .unwrap();
    };
    set(&server, "backoffice-lease-time", "1");
    set(&server, "backoffice-heartbeat", "1");
    set(&server, "backoffice-logfile", log.to_str().unwrap());
    set(&server, "host-journal", journal.to_str().unwrap());
    set(&server, "host-work-ms", "2000");
    server
        .connect("app")
        .batch_execute("INSERT INTO restart.outbox(body) VALUES ('a'), ('b'), ('c')")
        .unwrap();
    let mut a = on_host("host-a", false, &["run", &url]).spawn();
    assert!(
        wait_until(DEADLINE, || std::fs::read_to_string(&journal)
            .is_ok_and(|t| t.contains("enter"))),
        "host-a never started"
    );
    server.restart();
    let st = crate::harness::wait_child(&mut a, Duration::from_secs(60), "the worker");
    assert!(st.success());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("PostgreSQL"),
        "the failure is logged with PostgreSQL's reason: {text}"
    );
    on_host("host-b", false, &["run", &url]).output().success();
    let left: i64 = server
        .connect("app")
        .query_one("SELECT count(*) FROM restart.outbox WHERE done = 0", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the batch was done after the restart: {text}");
}

/// A network namespace of the test's own, joined to this one by a veth
/// pair: `10.212.N.1` on this side (where a PostgreSQL server listens),
/// `10.212.N.2` inside. Removed on drop (which removes the pair too).
struct NetNs {
    name: String,
    outer: String,
    n: u32,
}

impl NetNs {
    /// `None` (after saying why) where network namespaces are not
    /// permitted: not root, no `ip`, or the kernel refuses.
    fn new() -> Option<NetNs> {
        let required = std::env::var("BACKOFFICE_REQUIRE_EXTERNAL").as_deref() == Ok("1");
        if !crate::harness::is_root() {
            assert!(!required, "network namespaces need root here");
            eprintln!("SKIPPED: network namespaces need root");
            return None;
        }
        if !crate::harness::have("ip") {
            return None;
        }
        // Distinct per test process: the pid picks the subnet and names.
        let n = std::process::id() % 250 + 1;
        let ns = NetNs {
            name: format!("bo12-{}", std::process::id()),
            outer: format!("bo12h{}", std::process::id() % 100_000),
            n,
        };
        let inner = format!("bo12n{}", std::process::id() % 100_000);
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), ns.name.clone()],
            vec![
                "link".into(),
                "add".into(),
                ns.outer.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                inner.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                inner.clone(),
                "netns".into(),
                ns.name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{}/30", ns.outer_ip()),
                "dev".into(),
                ns.outer.clone(),
            ],
            vec!["link".into(), "set".into(), ns.outer.clone(), "up".into()],
        ];
        for s in &steps {
            let done = Cmd::new("ip").args(s).output();
            if !done.out.status.success() {
                assert!(!required, "ip {s:?}: {}", done.stderr());
                eprintln!(
                    "SKIPPED: network namespaces not permitted: ip {s:?}: {}",
                    done.stderr()
                );
                return None;
            }
        }
        for s in [
            vec![
                "addr",
                "add",
                &format!("{}/30", ns.inner_ip()),
                "dev",
                &inner,
            ],
            vec!["link", "set", &inner, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            Cmd::new("ip")
                .args(["netns", "exec", &ns.name, "ip"])
                .args(s)
                .output()
                .success();
        }
        Some(ns)
    }

    fn outer_ip(&self) -> String {
        format!("10.212.{}.1", self.n)
    }

    fn inner_ip(&self) -> String {
        format!("10.212.{}.2", self.n)
    }

    /// Cuts the link (`up = false`) or restores it.
    fn link(&self, up: bool) {
        Cmd::new("ip")
            .args(["link", "set", &self.outer, if up { "up" } else { "down" }])
            .output()
            .success();
    }

    /// `host ARGS` run inside the namespace, as host `host`.
    fn host(&self, host: &str, args: &[&str]) -> Cmd {
        Cmd::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(crate::harness::host_bin())
            .args(args)
            .env("BACKOFFICE_HOST_ID", host)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.outer])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Issue 12, tests: a host cut off from the database mid-run. Host A runs
/// in a network namespace of its own and reaches a PostgreSQL server of
/// this test's own over a veth pair (TCP, addresses only inside what the
/// test made). The link is cut while A works: its heartbeat stops
/// reaching the database, host B (this side) takes over after it runs out
/// and delivers the batch. When the link comes back, A's writes, held up
/// in TCP all along, finally arrive, and are fenced out: every row is
/// recorded once, by term 2, and A's renewals do not revive its claim.
#[test]
fn a_host_cut_off_from_the_network_is_fenced_out_when_it_comes_back() {
    let Some(ns) = NetNs::new() else { return };
    let port = 15432 + (std::process::id() % 1000) as u16;
    let listen = format!("listen_addresses={}", ns.outer_ip());
    let port_s = format!("port={port}");
    let Some(mut server) = pg::PgServer::start_with(&[&listen, &port_s]) else {
        return;
    };
    let hba = server.data_dir().join("pg_hba.conf");
    let mut text = std::fs::read_to_string(&hba).unwrap();
    text.push_str(&format!("host all all {}/32 trust\n", ns.inner_ip()));
    std::fs::write(&hba, text).unwrap();
    server.restart();
    server
        .connect("postgres")
        .batch_execute("CREATE DATABASE app")
        .unwrap();
    // B reaches the server through its socket; A over TCP from inside.
    let local = format!(
        "postgresql://{}:{}@localhost/app?host={}&port={port}&schema=cut",
        pg::SUPERUSER,
        pg::PASSWORD,
        server.socket_dir().display()
    );
    let remote = format!(
        "postgresql://{}:{}@{}:{port}/app?schema=cut",
        pg::SUPERUSER,
        pg::PASSWORD,
        ns.outer_ip()
    );
    let env = Env::new();
    let log = env.path("cut.log");
    let journal = env.path("cut.journal");
    Cmd::host().args(["init", &local]).output().success();
    let mut c = server.connect("app");
    for (k, v) in [
        ("backoffice-lease-time", "1"),
        ("backoffice-heartbeat", "1"),
        ("backoffice-logfile", log.to_str().unwrap()),
        ("host-journal", journal.to_str().unwrap()),
        ("host-fenced-write", "on"),
        ("host-work-ms", "3000"),
    ] {
        c.execute(
            "INSERT INTO cut.config(name, value, mtime) VALUES ($1, $2, 0)",
            &[&k, &v],
        )
        .unwrap();
    }
    c.batch_execute("INSERT INTO cut.outbox(body) VALUES ('a'), ('b'), ('c')")
        .unwrap();
    let mut a = ns.host("host-a", &["run", &remote]).spawn();
    assert!(
        wait_until(DEADLINE, || std::fs::read_to_string(&journal)
            .is_ok_and(|t| t.contains("enter"))),
        "host-a never started (log: {})",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    ns.link(false);
    // B waits on deck until A's heartbeat runs out, then delivers.
    on_host("host-b", false, &["run", &local])
        .output()
        .success();
    let left: i64 = c
        .query_one("SELECT count(*) FROM cut.outbox WHERE done = 0", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "host-b delivered the batch");
    ns.link(true);
    let st = crate::harness::wait_child(&mut a, Duration::from_secs(90), "the cut-off worker");
    assert!(st.success());
    let rows: Vec<(i64, i64)> = c
        .query("SELECT id, term FROM cut.host_delivered ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![(1, 2), (2, 2), (3, 2)],
        "each row once, by term 2"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("fenced"), "A's refusal is logged: {text}");
    let r = c
        .query_one("SELECT term, cur_pid, handovers FROM cut.bo_lease", &[])
        .unwrap();
    let (term, cur_pid, handovers): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    assert_eq!(
        (term, cur_pid, handovers),
        (2, 0, 1),
        "A did not revive its claim"
    );
}

/// Issue 12, item 4, at the last step: a holder's end-of-run write must not
/// undo a takeover that committed while it was under way. Under
/// PostgreSQL's READ COMMITTED, a release that read the lease without a
/// lock and then wrote it back would, once the takeover's lock is gone,
/// write its stale copy over the new holder — term included, so its own
/// fence check would then pass. The test holds the lease row locked when
/// the worker reaches its release, takes the lease over in that same
/// transaction (term 2, another holder), and commits: the worker must see
/// the new term, record nothing, and leave the takeover as it is.
#[test]
fn a_release_never_writes_over_a_takeover_that_committed_meanwhile() {
    let env = Env::new();
    let Some(r) = PgRepo::new(&env, "release", 1, 30) else {
        return;
    };
    r.set("host-work-ms", "1500");
    r.publish(1);
    let mut a = on_host("host-a", false, &["run", &r.url]).spawn();
    assert!(
        wait_until(DEADLINE, || std::fs::read_to_string(&r.journal)
            .is_ok_and(|t| t.contains("enter"))),
        "host-a never started"
    );
    // Lock the row while A works; A's release then waits for it.
    let mut b = r.client();
    let mut tx = b.transaction().unwrap();
    tx.query_one("SELECT term FROM bo_lease WHERE id = 1 FOR UPDATE", &[])
        .unwrap();
    let mut watch = r.client();
    assert!(
        wait_until(DEADLINE, || watch
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name = 'backoffice'
                    AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
            >= 1),
        "the worker never reached its release"
    );
    // The takeover, committed while A's release waits.
    tx.execute(
        "UPDATE bo_lease SET term = 2, cur_pid = 999999, cur_host = 'host-b',
                cur_expires = cur_expires + 3600, cur_alive_until = cur_expires + 3600
          WHERE id = 1",
        &[],
    )
    .unwrap();
    tx.commit().unwrap();
    let st = crate::harness::wait_child(&mut a, DEADLINE, "host-a");
    assert!(st.success());
    let row = r
        .client()
        .query_one("SELECT term, cur_pid, cur_host FROM bo_lease", &[])
        .unwrap();
    let got: (i64, i64, Option<String>) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        got,
        (2, 999999, Some("host-b".into())),
        "the takeover stands after the old holder's release"
    );
}

/// Issue 12, item 1: `token` on a PostgreSQL URL: the token is shown once,
/// only its hash is kept in the schema's `config`, `--check` sees it,
/// `--revoke` removes it; the URL's password is never printed.
#[test]
fn the_api_token_works_on_a_postgresql_schema() {
    let env = Env::new();
    let Some(r) = PgRepo::new(&env, "tok", 60, 5) else {
        return;
    };
    let done = Cmd::backoffice().args(["token", "-R", &r.url]).output();
    let err = done.stderr();
    let token = done.success().trim().to_owned();
    assert!(token.starts_with("bo_") && token.len() == 67, "{token}");
    assert!(!err.contains(pg::PASSWORD), "{err}");
    let stored: String = r
        .client()
        .query_one(
            "SELECT value FROM config WHERE name = 'backoffice-api-token'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(stored.starts_with("sha256:"), "{stored}");
    assert!(!stored.contains(&token[3..]), "only the hash is kept");
    let check = Cmd::backoffice()
        .args(["token", "--check", "-R", &r.url])
        .output()
        .success();
    assert!(check.contains("an API token is set"), "{check}");
    let gone = Cmd::backoffice()
        .args(["token", "--revoke", "-R", &r.url])
        .output()
        .success();
    assert!(gone.contains("revoked"), "{gone}");
    let check = Cmd::backoffice()
        .args(["token", "--check", "-R", &r.url])
        .output()
        .success();
    assert!(check.contains("no API token"), "{check}");
}

/// The binary's six tasks on a PostgreSQL schema: a run reports no task
/// as failed (replication and maintenance do not run there, which `status`
/// says once, instead of a failure in every run's record and log line).
#[test]
fn the_binarys_run_on_postgresql_fails_no_task() {
    let Some(db) = pg::database() else { return };
    let url = db.url("binary");
    Cmd::backoffice()
        .args(["setting", "-R", &url, "backoffice-lease-time", "1"])
        .output()
        .success();
    Cmd::backoffice().args(["run", &url]).output().success();
    let json = Cmd::backoffice()
        .args(["status", "--json", &url])
        .output()
        .success();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let tasks = v["last_run"]["tasks"].as_array().expect("a recorded run");
    assert_eq!(tasks.len(), 6, "{json}");
    for t in tasks {
        assert!(t["error"].is_null(), "a task failed: {t}");
    }
    let text = Cmd::backoffice().args(["status", &url]).output().success();
    assert!(
        text.contains("works on SQLite repositories only"),
        "status says which tasks do not run here: {text}"
    );
}

/// A host that publishes just after the worker it started has done its
/// run — but while that process still lives — gets a new worker: the
/// kept "just started" answer only stands while that worker has not yet
/// taken the lease. Here the started process is a shell that runs the
/// worker and then sleeps 3 s, so it is alive, and not in the lease, when
/// the second event is published; the term moved, so the check asks the
/// database and starts another worker. (Before, the answer "starting"
/// stood while the process lived: the second event waited for a later
/// request, as `pg_web::an_event_posted_over_http_runs_a_hook_on_postgresql_with_no_manual_run`
/// saw once under load.)
#[test]
fn publishing_after_the_started_worker_ran_starts_another() {
    use backoffice::pg::{self as bpg, PgTrigger};
    use backoffice::{Started, Tasks};
    let env = Env::new();
    let Some(r) = PgRepo::new(&env, "again", 1, 1) else {
        return;
    };
    let url = bpg::worker_url(&r.url).unwrap();
    let conn = url.connect().unwrap();
    let unstamped = || -> i64 {
        r.client()
            .query_one("SELECT count(*) FROM bo_event WHERE eventid IS NULL", &[])
            .unwrap()
            .get(0)
    };
    let trigger =
        PgTrigger::new(Tasks::new()).with_worker_command(backoffice::process::WorkerCommand {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "\"$0\" worker \"$@\"; sleep 3".into(),
                crate::harness::host_bin().into(),
            ],
        });
    let ev = |title: &str| backoffice::events::Event {
        kind: "k".into(),
        title: title.into(),
        ..Default::default()
    };
    bpg::publish(&mut *conn.client(), url.schema(), &ev("first")).unwrap();
    trigger.published(&url);
    assert!(matches!(
        trigger.after_request(&conn),
        Started::Worker { .. }
    ));
    // The worker's run: the first event has its place and the lease is
    // free again, while the started process (the shell) still sleeps.
    assert!(
        wait_until(DEADLINE, || unstamped() == 0 && r.lease().2 == 0),
        "the first worker ran"
    );
    bpg::publish(&mut *conn.client(), url.schema(), &ev("second")).unwrap();
    trigger.published(&url);
    let second = trigger.after_request(&conn);
    assert!(
        matches!(second, Started::Worker { .. }),
        "the second publish started no worker: {second:?}"
    );
    assert!(
        wait_until(DEADLINE, || unstamped() == 0),
        "the second event got its place with no further request"
    );
}
