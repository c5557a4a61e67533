//! Issue 12, item 2: the shipped tasks on a PostgreSQL repository.
//!
//! The retry ledger's contract (the same checks on an SQLite repository and
//! a PostgreSQL schema), and shell hooks on a PostgreSQL schema: in process
//! (a run whose lease was taken over records nothing) and end to end
//! through the real binary (`hook add`, `publish`, `run` and `status` on a
//! URL).

use std::path::Path;
use std::time::Duration;

use backoffice::Db;
use backoffice::ledger::{self, Backoff, Entry};

use crate::harness::{Cmd, Env, wait_until};
use crate::pg;

/// Every wait in these tests gives up after this long.
const DEADLINE: Duration = Duration::from_secs(30);

/// The ledger's checks, run on both stores: a new target's entry, a
/// failure backing it off by the policy (twice), the next retry, a success
/// moving the cursor (never back), `put` resetting it, every entry of a
/// task in byte order, a fenced write refused, and `remove`.
fn ledger_contract(db: Db<'_>, set_term: &dyn Fn(u64)) {
    let store = db.store();
    assert_eq!(ledger::get(db, "hooks", "1").unwrap(), None, "{store}");
    assert_eq!(ledger::next_retry(db, "hooks").unwrap(), None, "{store}");
    assert_eq!(ledger::all(db, "hooks").unwrap(), vec![], "{store}");

    // start: a new target's entry; a second start leaves it alone.
    ledger::start(db, "hooks", "1", 7).unwrap();
    ledger::start(db, "hooks", "1", 99).unwrap();
    let e = ledger::get(db, "hooks", "1").unwrap().unwrap();
    assert_eq!((e.cursor, e.failures, e.next_attempt), (7, 0, 0), "{store}");

    // failed: failures + 1, backed off 1 minute (+≤10 %), then 2.
    let p = Backoff::default();
    let e = ledger::failed(db, "hooks", "1", 1000, "exit 3", Some("oops"), &p).unwrap();
    assert_eq!((e.cursor, e.failures), (7, 1), "{store}: {e:?}");
    assert!((1060..=1066).contains(&e.next_attempt), "{store}: {e:?}");
    assert_eq!(e.last_error.as_deref(), Some("exit 3"), "{store}");
    assert_eq!(e.last_output.as_deref(), Some("oops"), "{store}");
    assert_eq!(e.last_run, Some(1000), "{store}");
    assert!(!e.ready(1000) && e.ready(e.next_attempt), "{store}");
    let e = ledger::failed(db, "hooks", "1", 2000, "exit 3", None, &p).unwrap();
    assert_eq!(e.failures, 2, "{store}");
    assert!((2120..=2132).contains(&e.next_attempt), "{store}: {e:?}");
    // The same seed, the same jitter, on either store.
    assert_eq!(
        e.next_attempt,
        2000 + p.delay(2, ledger::seed("hooks", "1")),
        "{store}"
    );
    assert_eq!(
        ledger::next_retry(db, "hooks").unwrap(),
        Some(e.next_attempt),
        "{store}"
    );
    assert_eq!(ledger::next_retry(db, "webhooks").unwrap(), None, "{store}");

    // succeeded: cursor forward, failures and error cleared.
    ledger::succeeded(db, "hooks", "1", 9, 3000, Some("ok")).unwrap();
    let e = ledger::get(db, "hooks", "1").unwrap().unwrap();
    assert_eq!(
        (e.cursor, e.failures, e.next_attempt, e.last_run),
        (9, 0, 0, Some(3000)),
        "{store}"
    );
    assert_eq!(
        (e.last_error, e.last_output.as_deref()),
        (None, Some("ok")),
        "{store}"
    );
    assert_eq!(ledger::next_retry(db, "hooks").unwrap(), None, "{store}");
    // Never back.
    ledger::succeeded(db, "hooks", "1", 4, 3100, None).unwrap();
    let e = ledger::get(db, "hooks", "1").unwrap().unwrap();
    assert_eq!((e.cursor, e.last_run), (9, Some(3100)), "{store}");
    // A success creates a missing entry; a failure too (cursor 0).
    ledger::succeeded(db, "hooks", "10", 5, 3200, None).unwrap();
    let e = ledger::failed(db, "hooks", "9", 3300, "boom", None, &p).unwrap();
    assert_eq!((e.cursor, e.failures), (0, 1), "{store}");

    // put: an operator's reset, cursor back included.
    let mut e = ledger::get(db, "hooks", "1").unwrap().unwrap();
    e.cursor = 2;
    e.failures = 4;
    e.last_error = Some("set by hand".into());
    ledger::put(db, &e).unwrap();
    assert_eq!(
        ledger::get(db, "hooks", "1").unwrap().unwrap(),
        e,
        "{store}"
    );
    ledger::put(
        db,
        &Entry {
            task: "webhooks".into(),
            target: "w".into(),
            cursor: 1,
            ..Entry::default()
        },
    )
    .unwrap();

    // all: one task's entries, by target in byte order ("10" < "9").
    let targets: Vec<String> = ledger::all(db, "hooks")
        .unwrap()
        .into_iter()
        .map(|e| e.target)
        .collect();
    assert_eq!(targets, ["1", "10", "9"], "{store}");

    // Inside a write fenced on a term the lease no longer carries, a
    // ledger write is rolled back.
    set_term(3);
    let r: Result<(), backoffice::db::DbError> = db.write(Some(2), |db| {
        ledger::succeeded(db, "hooks", "1", 50, 4000, None)
    });
    assert!(r.unwrap_err().is_fenced(), "{store}");
    assert_eq!(
        ledger::get(db, "hooks", "1").unwrap().unwrap().cursor,
        2,
        "{store}"
    );
    db.write(Some(3), |db| {
        ledger::succeeded(db, "hooks", "1", 50, 4000, None)
    })
    .unwrap();
    assert_eq!(
        ledger::get(db, "hooks", "1").unwrap().unwrap().cursor,
        50,
        "{store}"
    );

    // remove: gone, the others stay; removing again is no error.
    ledger::remove(db, "hooks", "1").unwrap();
    ledger::remove(db, "hooks", "1").unwrap();
    assert_eq!(ledger::get(db, "hooks", "1").unwrap(), None, "{store}");
    assert_eq!(ledger::all(db, "hooks").unwrap().len(), 2, "{store}");
    assert_eq!(ledger::all(db, "webhooks").unwrap().len(), 1, "{store}");
}

/// Issue 12, tests: one contract for the retry ledger on both stores.
#[test]
fn the_ledger_contract_holds_on_sqlite_and_on_postgresql() {
    let env = Env::new();
    let path = env.path("ledger.db");
    rusqlite::Connection::open(&path).unwrap();
    let repo = backoffice::Repo::open(&path).unwrap();
    let conn = repo.conn();
    ledger_contract(Db::Sqlite(conn), &|t| {
        backoffice::repo::config_set(conn, backoffice::LEASE_ROW, &format!("0 0 0 0 term={t}"))
            .unwrap()
    });

    let Some(db) = pg::database() else { return };
    let url = backoffice::pg::PgUrl::parse(&db.url("ledger")).unwrap();
    let pc = url.connect().unwrap();
    ledger_contract(Db::Postgres(&pc), &|t| {
        pc.execute("UPDATE bo_lease SET term = ?1", &[(t as i64).into()])
            .unwrap();
    });
}

/// `s` quoted for `/bin/sh`.
pub(crate) fn sh(s: &Path) -> String {
    format!("'{}'", s.display().to_string().replace('\'', "'\\''"))
}

/// A PostgreSQL repository for the `backoffice` binary: a database of its
/// own, a short lease and heartbeat.
struct PgHooks {
    _db: pg::PgDb,
    url: String,
}

impl PgHooks {
    fn new(schema: &str) -> Option<PgHooks> {
        let db = pg::database()?;
        let url = db.url(schema);
        let r = PgHooks { _db: db, url };
        r.bo(&["setting", "-R", &r.url, "backoffice-lease-time", "1"]);
        r.bo(&["setting", "-R", &r.url, "backoffice-heartbeat", "1"]);
        Some(r)
    }

    /// Runs `backoffice ARGS` to success; returns its stdout.
    fn bo(&self, args: &[&str]) -> String {
        Cmd::backoffice().args(args).output().success()
    }

    fn add(&self, cmd: &str) -> i64 {
        let out = self.bo(&["hook", "add", "-R", &self.url, "--command", cmd]);
        // "added:   1  after-event …"
        out.trim_start_matches("added:")
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no hook id in {out:?}"))
    }

    /// Publishes an event whose body would touch `never` if a shell ever
    /// saw it.
    fn publish(&self, title: &str, never: &Path) {
        let body = format!(
            "a body; $(touch {}) `touch {}` 'q'",
            never.display(),
            never.display()
        );
        self.bo(&[
            "publish",
            "-R",
            &self.url,
            "--no-trigger",
            "--kind",
            "wiki",
            "--title",
            title,
            "--body",
            &body,
        ]);
    }

    /// One worker run (`backoffice run URL`); returns what it printed. A
    /// failing hook makes the run report a failure, so either exit status
    /// is accepted and both outputs are returned.
    fn run(&self) -> String {
        let out = Cmd::backoffice().args(["run", &self.url]).output();
        format!("{}{}", out.stdout(), out.stderr())
    }

    fn status(&self) -> String {
        self.bo(&["status", &self.url])
    }

    /// A hook's ledger row: (cursor, failures, next_attempt).
    fn entry(&self, id: i64) -> Option<(i64, i64, i64)> {
        let url = backoffice::pg::PgUrl::parse(&self.url).unwrap();
        let c = url.connect().unwrap();
        ledger::get(Db::Postgres(&c), "hooks", &id.to_string())
            .unwrap()
            .map(|e| (e.cursor, e.failures, e.next_attempt))
    }

    /// What an operator's "retry now" does: the backoff is over.
    fn retry_now(&self, id: i64) {
        let url = backoffice::pg::PgUrl::parse(&self.url).unwrap();
        let c = url.connect().unwrap();
        c.execute(
            "UPDATE bo_ledger SET next_attempt = 0 WHERE task = 'hooks' AND target = ?1",
            &[id.to_string().into()],
        )
        .unwrap();
    }
}

/// The event titles in a hook's output file, one per stdin line, in order.
pub(crate) fn titles(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["title"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Issue 12, item 2, end to end with real processes: a hook added with
/// `backoffice hook add -R URL` runs in `backoffice run URL` workers on
/// every event published with `backoffice publish -R URL`, each event once,
/// in order, with the JSON on stdin and the environment (the repository as
/// its URL with the password hidden); nothing from an event reaches the
/// shell. A failing hook backs off by the ledger, is not re-run before its
/// next attempt, is reported by `backoffice status URL`, and delivers once
/// it succeeds. Progress survives further runs without re-running events.
#[test]
fn hooks_run_on_a_postgresql_repository_through_the_binary() {
    let env = Env::new();
    let Some(r) = PgHooks::new("hooks_e2e") else {
        return;
    };
    let good_out = env.path("good.jsonl");
    let good_env = env.path("good.env");
    let good = r.add(&format!(
        "cat >> {}; echo \"$BACKOFFICE_HOOK_ID $BACKOFFICE_FIRST_EVENT $BACKOFFICE_LAST_EVENT \
         $BACKOFFICE_EVENT_COUNT $BACKOFFICE_REPO\" >> {}",
        sh(&good_out),
        sh(&good_env)
    ));
    // Fails (exit 3, with output) until the flag file exists.
    let flag = env.path("flag");
    let bad_out = env.path("bad.jsonl");
    let bad = r.add(&format!(
        "test -e {} || {{ echo not ready; exit 3; }}; cat >> {}",
        sh(&flag),
        sh(&bad_out)
    ));
    r.bo(&["setting", "-R", &r.url, "hook-max-failures", "2"]);
    let list = r.bo(&["hook", "list", "-R", &r.url]);
    assert!(list.contains("2 hooks"), "{list}");

    let never = env.path("never");
    r.publish("one", &never);
    r.publish("two", &never);
    let said = r.run();
    assert_eq!(titles(&good_out), ["one", "two"], "{said}");
    let env_lines = std::fs::read_to_string(&good_env).unwrap();
    let url_hidden = r.url.replace(pg::PASSWORD, "***");
    assert_eq!(env_lines, format!("{good} 1 2 2 {url_hidden}\n"));
    assert!(!env_lines.contains(pg::PASSWORD), "{env_lines}");
    assert!(!never.exists(), "event data ran in a shell");
    assert_eq!(r.entry(good), Some((2, 0, 0)));
    let (cursor, failures, next) = r.entry(bad).unwrap();
    assert_eq!((cursor, failures), (0, 1), "{said}");
    let now = crate::harness::now();
    assert!(
        (now + 40..=now + 80).contains(&next),
        "backed off about a minute: {next} vs {now}"
    );
    let st = r.status();
    assert!(st.contains(&format!("hook {good} (")), "{st}");
    assert!(st.contains("1 failure(s) in a row"), "{st}");

    // Backing off: another run does not run the failing hook again (its
    // count stays 1) and gives the good one only what is new.
    r.publish("three", &never);
    std::thread::sleep(Duration::from_millis(1100)); // a lease time apart
    r.run();
    assert_eq!(titles(&good_out), ["one", "two", "three"]);
    assert_eq!(r.entry(bad).unwrap().1, 1, "not retried before its time");

    // Its time comes (as an operator's retry would make it): it fails
    // again, and now reaches hook-max-failures: `status` reports it.
    r.retry_now(bad);
    std::thread::sleep(Duration::from_millis(1100));
    r.run();
    assert_eq!(r.entry(bad).unwrap().1, 2);
    let st = r.status();
    assert!(
        st.contains(&format!("hook {bad} is failing (2 failures in a row)")),
        "{st}"
    );
    assert!(st.contains("not ready"), "the last output is shown: {st}");
    assert!(titles(&bad_out).is_empty());

    // Fixed: the retry delivers every event it missed, once, in order.
    std::fs::write(&flag, "").unwrap();
    r.retry_now(bad);
    std::thread::sleep(Duration::from_millis(1100));
    let said = r.run();
    assert_eq!(titles(&bad_out), ["one", "two", "three"], "{said}");
    assert_eq!(r.entry(bad), Some((3, 0, 0)));
    let st = r.status();
    assert!(!st.contains("is failing"), "{st}");

    // Later runs re-run nothing: the progress is in the ledger.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1100));
        r.run();
    }
    assert_eq!(titles(&good_out), ["one", "two", "three"]);
    assert_eq!(titles(&bad_out), ["one", "two", "three"]);
    let st = r.status();
    assert!(st.contains("at event 3, 0 behind"), "{st}");

    // A published event with the trigger on: a background worker the
    // check started delivers it, once.
    r.bo(&["publish", "-R", &r.url, "--kind", "wiki", "--title", "four"]);
    assert!(
        wait_until(DEADLINE, || titles(&good_out).len() == 4
            && titles(&bad_out).len() == 4),
        "the triggered worker ran the hooks: {:?} {:?}",
        titles(&good_out),
        titles(&bad_out)
    );
    assert_eq!(titles(&good_out), ["one", "two", "three", "four"]);

    // `hook edit`, `hook test` and `hook remove` on the URL.
    let said = r.bo(&[
        "hook",
        "edit",
        "-R",
        &r.url,
        &bad.to_string(),
        "--command",
        "echo tested; cat >/dev/null",
    ]);
    assert!(said.contains("echo tested"), "{said}");
    let said = r.bo(&["hook", "test", "-R", &r.url, &bad.to_string()]);
    assert!(said.contains("ran on 4 event(s) (1..4)"), "{said}");
    assert!(said.contains("tested"), "{said}");
    assert_eq!(
        r.entry(bad),
        Some((4, 0, 0)),
        "a test leaves the state alone"
    );
    let json = r.bo(&["hook", "list", "--json", "-R", &r.url]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[1]["state"]["cursor"], 4, "{json}");
    r.bo(&["hook", "remove", "-R", &r.url, &bad.to_string()]);
    assert_eq!(r.entry(bad), None, "its ledger entry is gone");
    let list = r.bo(&["hook", "list", "-R", &r.url]);
    assert!(list.contains("1 hook"), "{list}");
    assert!(!list.contains(pg::PASSWORD), "{list}");
}

/// Issue 12, item 4 for hooks: a hooks run whose lease was taken over while
/// its hook ran (its term is no longer the lease's) records nothing — the
/// cursor stays, so the next holder offers the same events again (at least
/// once) — and stops with the fencing error.
#[test]
fn a_hooks_run_whose_term_is_gone_records_nothing() {
    use backoffice::{Context, Task};
    use backoffice_tasks::hooks::{self, Hooks, New};

    let env = Env::new();
    let Some(db) = pg::database() else { return };
    let url = backoffice::pg::PgUrl::parse(&db.url("hooks_fenced")).unwrap();
    let c = url.connect().unwrap();
    let pdb = Db::Postgres(&c);
    let out = env.path("out.jsonl");
    let h = hooks::add(
        pdb,
        &New {
            cmd: format!("cat >> {}", sh(&out)),
            seq: None,
            kind: hooks::AFTER_EVENT.into(),
            from_start: false,
        },
    )
    .unwrap();
    let ev = backoffice::events::Event {
        kind: "wiki".into(),
        title: "t".into(),
        ..Default::default()
    };
    backoffice::pg::publish(&mut *c.client(), url.schema(), &ev).unwrap();
    c.stamp_events(None).unwrap();
    c.execute("UPDATE bo_lease SET term = 8", &[]).unwrap();
    assert_eq!(
        Hooks.due(pdb, crate::harness::now()).unwrap(),
        backoffice::Due::Now
    );

    let ctx = |term| Context {
        db: pdb,
        repo: Path::new(url.redacted()),
        now: crate::harness::now(),
        debug: false,
        term,
    };
    let e = Hooks.run(&ctx(7)).unwrap_err();
    assert!(e.to_string().contains("fenced"), "{e}");
    assert_eq!(titles(&out), ["t"], "the hook ran (at least once)");
    let st = hooks::state(pdb, h.id).unwrap().unwrap();
    assert_eq!(st.cursor, 0, "nothing recorded");

    // The holder of term 8 runs it again and records it.
    assert_eq!(Hooks.run(&ctx(8)).unwrap(), 1);
    assert_eq!(titles(&out), ["t", "t"]);
    assert_eq!(hooks::state(pdb, h.id).unwrap().unwrap().cursor, 1);
    assert_eq!(
        Hooks.due(pdb, crate::harness::now()).unwrap(),
        backoffice::Due::Never
    );
    assert_eq!(Hooks.events_done(pdb).unwrap(), Some(1));
}

/// `hook add` on one PostgreSQL URL from many processes at once: every hook
/// is kept, each with its own id and ledger entry. (SQLite serialises the
/// read-modify-write of the `hooks` row with `BEGIN IMMEDIATE`; PostgreSQL's
/// read committed would let two adds read the same row and the later
/// commit drop the earlier hook.)
#[test]
fn hooks_added_at_once_from_many_processes_are_all_kept() {
    let Some(r) = PgHooks::new("hooks_race") else {
        return;
    };
    const N: usize = 16;
    let mut children: Vec<_> = (0..N)
        .map(|i| {
            Cmd::backoffice()
                .args(["hook", "add", "-R", &r.url, "--command"])
                .arg(format!("echo {i}"))
                .spawn()
        })
        .collect();
    for c in &mut children {
        let st = crate::harness::wait_child(c, DEADLINE, "hook add");
        assert!(st.success(), "a hook add failed: {st}");
    }
    let url = backoffice::pg::PgUrl::parse(&r.url).unwrap();
    let c = url.connect().unwrap();
    let hooks = backoffice_tasks::hooks::list(Db::Postgres(&c)).unwrap();
    let mut cmds: Vec<String> = hooks.iter().map(|(h, _)| h.cmd.clone()).collect();
    cmds.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("echo {i}")).collect();
    want.sort();
    assert_eq!(cmds, want, "every hook kept");
    let mut ids: Vec<i64> = hooks.iter().map(|(h, _)| h.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "distinct ids: {ids:?}");
    assert!(hooks.iter().all(|(_, s)| s.is_some()), "each has its entry");
    assert_eq!(ledger::all(Db::Postgres(&c), "hooks").unwrap().len(), N);
}

/// Issue 12, item 4, on SQLite (containers sharing one repository file):
/// the same as [`a_hooks_run_whose_term_is_gone_records_nothing`]. A run
/// on a term the lease no longer carries runs the hook (at least once) but
/// records nothing; the holder of the current term records it.
#[test]
fn a_hooks_run_whose_term_is_gone_records_nothing_on_sqlite() {
    use backoffice::{Context, Task};
    use backoffice_tasks::hooks::{self, Hooks, New};

    let env = Env::new();
    let path = env.path("fenced.db");
    rusqlite::Connection::open(&path).unwrap();
    let repo = backoffice::Repo::open(&path).unwrap();
    let conn = repo.conn();
    let db = Db::Sqlite(conn);
    let out = env.path("out.jsonl");
    let h = hooks::add(
        db,
        &New {
            cmd: format!("cat >> {}", sh(&out)),
            seq: None,
            kind: hooks::AFTER_EVENT.into(),
            from_start: false,
        },
    )
    .unwrap();
    let ev = backoffice::events::Event {
        kind: "wiki".into(),
        title: "t".into(),
        ..Default::default()
    };
    backoffice::events::publish(conn, &ev).unwrap();
    backoffice::repo::config_set(conn, backoffice::LEASE_ROW, "0 0 0 0 term=8").unwrap();
    let ctx = |term| Context {
        db,
        repo: &path,
        now: crate::harness::now(),
        debug: false,
        term,
    };
    let e = Hooks.run(&ctx(7)).unwrap_err();
    assert!(e.to_string().contains("fenced"), "{e}");
    assert_eq!(titles(&out), ["t"], "the hook ran (at least once)");
    let st = hooks::state(db, h.id).unwrap().unwrap();
    assert_eq!(st.cursor, 0, "nothing recorded");
    assert_eq!(Hooks.run(&ctx(8)).unwrap(), 1);
    assert_eq!(titles(&out), ["t", "t"]);
    assert_eq!(hooks::state(db, h.id).unwrap().unwrap().cursor, 1);
}

/// Issue 12, item 4 for email on SQLite (containers sharing one repository
/// file): an alerts run on a term the lease no longer carries queues
/// nothing and marks no event alerted; one with queued messages sends
/// them (at least once, under their stable names) but marks nothing sent;
/// both stop with the fencing error. The holder of the current term
/// records it all.
#[test]
fn a_notify_run_whose_term_is_gone_records_nothing_on_sqlite() {
    use backoffice::{Context, Task};
    use backoffice_tasks::notify::{Notify, subscribers};

    let env = Env::new();
    let path = env.path("fenced-mail.db");
    rusqlite::Connection::open(&path).unwrap();
    let repo = backoffice::Repo::open(&path).unwrap();
    let conn = repo.conn();
    let db = Db::Sqlite(conn);
    let dir = env.path("mail");
    for (k, v) in [
        ("email-send-method", "dir"),
        ("email-send-dir", dir.to_str().unwrap()),
        ("email-self", "bo@example.org"),
        ("email-url", "https://example.org"),
        ("email-subname", "[sq]"),
    ] {
        db.config_set(k, v).unwrap();
    }
    subscribers::add(
        conn,
        &subscribers::New {
            address: "now@example.org".into(),
            kinds: "*".into(),
            verified: true,
            ..Default::default()
        },
    )
    .unwrap();
    let ev = backoffice::events::Event {
        kind: "wiki".into(),
        title: "fresh".into(),
        ..Default::default()
    };
    backoffice::events::publish(conn, &ev).unwrap();
    backoffice::repo::config_set(conn, backoffice::LEASE_ROW, "0 0 0 0 term=8").unwrap();
    let now = crate::harness::now();
    let ctx = |term| Context {
        db,
        repo: &path,
        now,
        debug: false,
        term,
    };
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let files = || std::fs::read_dir(&dir).map_or(0, |d| d.count());

    // Queueing: nothing queued, the event not marked alerted.
    let e = Notify.run(&ctx(7)).unwrap_err();
    assert!(e.to_string().contains("fenced"), "{e}");
    assert_eq!(count("SELECT count(*) FROM bo_outbox"), 0, "nothing queued");
    assert_eq!(count("SELECT count(*) FROM bo_event WHERE alerted = 0"), 1);
    assert_eq!(files(), 0);

    // The holder of term 8 queues and sends it, once.
    assert_eq!(Notify.run(&ctx(8)).unwrap(), 1);
    assert_eq!(count("SELECT count(*) FROM bo_event WHERE alerted = 0"), 0);
    assert_eq!(
        count("SELECT count(*) FROM bo_outbox WHERE state = 'sent'"),
        1
    );
    assert_eq!(files(), 1);

    // A message queued by plain SQL: a stale run may send it (at least
    // once) but marks nothing sent.
    conn.execute(
        "INSERT INTO bo_outbox(address, kind, subject, body, ctime, next_attempt)
         VALUES ('sql@example.org', 'alert', 's', 'b', ?1, ?1)",
        [now],
    )
    .unwrap();
    let e = Notify.run(&ctx(7)).unwrap_err();
    assert!(e.to_string().contains("fenced"), "{e}");
    assert_eq!(
        count("SELECT count(*) FROM bo_outbox WHERE state = 'queued' AND attempts = 0"),
        1,
        "a stale run marked a message"
    );
    // The holder marks it sent (from the journal the stale run left, or
    // by sending it again under the same name): one file, not two.
    Notify.run(&ctx(8)).unwrap();
    assert_eq!(
        count("SELECT count(*) FROM bo_outbox WHERE state = 'sent'"),
        2
    );
    assert_eq!(files(), 2);
    assert_eq!(Notify.run(&ctx(8)).unwrap(), 0);
}

/// Issue 12, item 4, on SQLite (containers sharing one repository file):
/// a webhooks run on a term the lease no longer carries makes its delivery
/// (at least once) but records nothing, neither the cursor nor a failure,
/// and stops with the fencing error; the holder of the current term
/// records it. The stale run's answered delivery stays in the progress log
/// (a real delivery, in order), which the next holder folds in: it is
/// recorded once and not sent again.
#[test]
fn a_webhooks_run_whose_term_is_gone_records_nothing_on_sqlite() {
    use crate::pg_webhooks::{Receiver, SECRET};
    use backoffice::{Context, Task};
    use backoffice_tasks::webhooks::{self, New, Webhooks};

    let env = Env::new();
    let path = env.path("fenced.db");
    rusqlite::Connection::open(&path).unwrap();
    let repo = backoffice::Repo::open(&path).unwrap();
    let conn = repo.conn();
    let db = Db::Sqlite(conn);
    let rx = Receiver::ok();
    let new = |u: &str| New {
        url: u.to_owned(),
        secret: SECRET.to_owned(),
        kinds: "*".to_owned(),
        from_start: false,
    };
    let w = webhooks::add(db, &new(&rx.url)).unwrap();
    let publish = |title: &str| {
        let ev = backoffice::events::Event {
            kind: "wiki".into(),
            title: title.into(),
            ..Default::default()
        };
        backoffice::events::publish(conn, &ev).unwrap()
    };
    let first = publish("t");
    backoffice::repo::config_set(conn, backoffice::LEASE_ROW, "0 0 0 0 term=8").unwrap();
    let ctx = |term| Context {
        db,
        repo: &path,
        now: crate::harness::now(),
        debug: false,
        term,
    };
    let e = Webhooks.run(&ctx(7)).unwrap_err();
    assert!(e.to_string().contains("fenced"), "{e}");
    assert_eq!(rx.titles(), ["t"], "the delivery went out (at least once)");
    let got = webhooks::get(db, w.id).unwrap();
    assert_eq!((got.cursor, got.delivered), (0, 0), "nothing recorded");

    // A stale run does not fold the progress log in either.
    assert!(
        Webhooks
            .run(&ctx(7))
            .unwrap_err()
            .to_string()
            .contains("fenced")
    );
    assert_eq!(webhooks::get(db, w.id).unwrap().cursor, 0);

    // The holder of term 8 records it (from the log: not sent again).
    Webhooks.run(&ctx(8)).unwrap();
    assert_eq!(rx.titles(), ["t"]);
    let got = webhooks::get(db, w.id).unwrap();
    assert_eq!((got.cursor, got.delivered), (first, 1));
    assert_eq!(
        Webhooks.due(db, ctx(8).now).unwrap(),
        backoffice::Due::Never
    );

    // A failure is progress too: a stale run does not record it either.
    let bad = Receiver::start(usize::MAX, Duration::from_secs(60));
    let b = webhooks::add(db, &new(&bad.url)).unwrap();
    webhooks::remove(db, w.id).unwrap();
    publish("u");
    let e = Webhooks.run(&ctx(7)).unwrap_err();
    assert!(e.to_string().contains("fenced"), "{e}");
    assert_eq!(bad.requests(), 1);
    let got = webhooks::get(db, b.id).unwrap();
    assert_eq!((got.cursor, got.failures, got.next_attempt), (first, 0, 0));
    assert!(Webhooks.run(&ctx(8)).is_err(), "the endpoint fails");
    let got = webhooks::get(db, b.id).unwrap();
    assert_eq!((got.cursor, got.failures), (first, 1), "recorded by term 8");
}
