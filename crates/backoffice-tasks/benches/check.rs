//! The after-request check on an open connection, and the lease codec.
//!
//! ```text
//! cargo bench -p backoffice-tasks --bench check
//! ```
//!
//! Every `check` case runs `Backoffice::check_if_needed` on one connection
//! kept open for the whole benchmark, as a server's request handler would,
//! against a small repository (`config` with 200 rows) in a temporary
//! directory:
//!
//! * `journal`: `rollback` (`journal_mode=DELETE`, SQLite's default) or `wal`;
//! * `no_tasks`: no task, lease free: answers "nothing due";
//! * `outbox_idle`: one task whose `due` is a point lookup on a partial index
//!   (the example host's outbox: 10,000 rows, all done): "nothing due";
//! * `outbox_pending`: the same with one row pending: "needed" (the check
//!   only answers; nothing is spawned here);
//! * `ondeck`: a live worker is recorded on deck (a `sleep` child, with its
//!   real start time): "on deck". `cached` reuses one `Backoffice`, as a
//!   server does (it trusts a verified on-deck worker for 1 s, then costs a
//!   `kill(2)`); `fresh` builds a new `Backoffice` for every check, so every
//!   check reads `/proc/PID/stat` (a short-lived host such as `backoffice
//!   trigger` pays this).
//!
//! The target is a median of at most 5 µs for the cases a busy server hits.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use backoffice::LEASE_ROW;
use backoffice::process;
use backoffice::repo::config_set;
use backoffice::{Backoffice, Check, Due, Lease, Slot, Task, TaskError, Tasks};
use divan::{Bencher, black_box};
use rusqlite::{Connection, OptionalExtension};

fn main() {
    // Defaults keep the whole run to a few seconds; CLI flags still win.
    divan::Divan::default()
        .min_time(Duration::from_millis(50))
        .max_time(Duration::from_millis(400))
        .config_with_args()
        .main();
}

/// The example host's outbox task, reduced to its `due`.
struct Outbox;

impl Task for Outbox {
    fn name(&self) -> &str {
        "outbox"
    }

    fn due(&self, db: backoffice::Db<'_>, _now: i64) -> Result<Due, TaskError> {
        let conn = db.sqlite_only("outbox")?;
        let pending = conn
            .prepare_cached("SELECT 1 FROM outbox WHERE done = 0 LIMIT 1")?
            .query_row([], |_| Ok(()))
            .optional()?;
        Ok(if pending.is_some() {
            Due::Now
        } else {
            Due::Never
        })
    }

    fn run(&self, _: &backoffice::Context<'_>) -> Result<u64, TaskError> {
        Ok(0)
    }
}

const JOURNALS: &[&str] = &["rollback", "wal"];

/// A repository in a fresh temporary directory, and the connection the
/// "request" holds open.
struct Fixture {
    _dir: tempfile::TempDir,
    conn: Connection,
}

impl Fixture {
    fn path(&self) -> std::path::PathBuf {
        self._dir.path().join("repo.db")
    }
}

fn fixture(journal: &str, pending: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("repo.db");
    create_repo(&path, journal, pending);
    let conn = Connection::open(&path).expect("open");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy");
    Fixture { _dir: dir, conn }
}

fn create_repo(path: &Path, journal: &str, pending: bool) {
    let conn = Connection::open(path).expect("create");
    let mode = if journal == "wal" { "WAL" } else { "DELETE" };
    let got: String = conn
        .query_row(&format!("PRAGMA journal_mode={mode}"), [], |r| r.get(0))
        .expect("journal mode");
    assert_eq!(got.to_ascii_uppercase(), mode);
    conn.execute_batch(
        "CREATE TABLE outbox(id INTEGER PRIMARY KEY, body TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0);
         CREATE INDEX outbox_pending ON outbox(id) WHERE done = 0;
         BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
           INSERT INTO outbox(body, done) SELECT 'message ' || i, 1 FROM n;
         COMMIT;",
    )
    .expect("schema");
    if pending {
        conn.execute("INSERT INTO outbox(body) VALUES ('pending')", [])
            .expect("pending row");
    }
    drop(conn);
    // Repo::open creates the config table exactly as the engine wants it.
    let repo = backoffice::Repo::open(path).expect("Repo::open");
    let conn = repo.conn();
    conn.execute_batch("BEGIN").expect("begin");
    for i in 0..200 {
        config_set(conn, &format!("filler-{i:03}"), "some value").expect("filler");
    }
    conn.execute_batch("COMMIT").expect("commit");
}

fn outbox() -> Tasks {
    Tasks::new().with(Outbox)
}

fn run_check(bencher: Bencher, fx: &Fixture, bo: &Backoffice, expect: impl Fn(&Check) -> bool) {
    let first = bo.check_if_needed(&fx.conn);
    assert!(expect(&first), "unexpected answer: {first:?}");
    bencher.bench_local(|| black_box(bo.check_if_needed(black_box(&fx.conn))));
}

mod check {
    use super::*;

    #[divan::bench(args = JOURNALS)]
    fn no_tasks(bencher: Bencher, journal: &str) {
        let fx = fixture(journal, false);
        let bo = Backoffice::new(Tasks::new());
        run_check(bencher, &fx, &bo, |c| {
            matches!(c, Check::NothingDue { next: None })
        });
    }

    #[divan::bench(args = JOURNALS)]
    fn outbox_idle(bencher: Bencher, journal: &str) {
        let fx = fixture(journal, false);
        let bo = Backoffice::new(outbox());
        run_check(bencher, &fx, &bo, |c| {
            matches!(c, Check::NothingDue { next: None })
        });
    }

    /// The `backoffice` binary's own task (email alerts) on a repository
    /// that never published an event: its tables do not exist.
    #[divan::bench(args = JOURNALS)]
    fn notify_no_tables(bencher: Bencher, journal: &str) {
        let fx = fixture(journal, false);
        let bo = Backoffice::new(Tasks::new().with(backoffice_tasks::notify::Notify));
        run_check(bencher, &fx, &bo, |c| {
            matches!(c, Check::NothingDue { next: None })
        });
    }

    /// Email set up, the last digest sent, nothing new: returns the time
    /// the next digest is due.
    fn email_ready(fx: &Fixture) -> i64 {
        backoffice_tasks::notify::install(&fx.conn).expect("install");
        backoffice::repo::config_set(&fx.conn, "email-send-method", "dir").expect("set");
        let now = backoffice::clock::now();
        let dt = backoffice_tasks::notify::schedule::DigestTime::default();
        backoffice::repo::config_set(
            &fx.conn,
            "email-last-digest-boundary",
            &dt.boundary_at_or_before(now).to_string(),
        )
        .expect("set");
        dt.boundary_after(now)
    }

    /// The same with email set up and nothing new: the next digest is due later.
    #[divan::bench(args = JOURNALS)]
    fn notify_idle(bencher: Bencher, journal: &str) {
        let fx = fixture(journal, false);
        let next = email_ready(&fx);
        let bo = Backoffice::new(Tasks::new().with(backoffice_tasks::notify::Notify));
        run_check(
            bencher,
            &fx,
            &bo,
            |c| matches!(c, Check::NothingDue { next: Some(t) } if *t == next),
        );
    }

    /// One run of `tasks` on the fixture's repository, as a repository is
    /// once serviced: it writes the due summary.
    fn serviced(fx: &Fixture, tasks: &Tasks) {
        let mut repo = backoffice::Repo::open(fx.path()).expect("open");
        let opts = backoffice::RunOptions {
            nodelay: true,
            ..Default::default()
        };
        backoffice::run(&mut repo, tasks, &opts).expect("a run");
        assert!(
            repo.get(backoffice::due::ROW).expect("read").is_some(),
            "the run wrote the due summary"
        );
    }

    /// The `backoffice` binary's six tasks (alerts, hooks, webhooks,
    /// replicate, maintenance, schedules).
    fn binary_tasks() -> Tasks {
        Tasks::new()
            .with(backoffice_tasks::notify::Notify)
            .with(backoffice_tasks::hooks::Hooks)
            .with(backoffice_tasks::webhooks::Webhooks)
            .with(backoffice_tasks::replicate::Replicate)
            .with(backoffice_tasks::maintain::Maintenance)
            .with(backoffice_tasks::schedules::Schedules)
    }

    /// 100 schedules, none due before tomorrow: daily cron patterns at
    /// times after now, in a few zones, and hourly-or-longer intervals.
    fn add_schedules(fx: &Fixture, n: usize) {
        use backoffice_tasks::schedules::store::{self, Action, CatchUp, Timing};
        let conn = rusqlite::Connection::open(fx.path()).expect("open");
        let now = backoffice::clock::now();
        for i in 0..n {
            let timing = if i % 2 == 0 {
                Timing::Cron {
                    pattern: format!("{} {} * * *", i % 60, i % 24),
                    zone: Some(["UTC", "Europe/Paris", "America/New_York"][i % 3].into()),
                }
            } else {
                Timing::Every(format!("{}h", 24 + i))
            };
            let action = Action::Command(format!("echo {i}"));
            // Added just now: the first slot of each is in the future.
            store::add(
                &conn,
                &format!("s{i}"),
                &timing,
                &action,
                CatchUp::Once,
                now,
            )
            .expect("add a schedule");
        }
    }

    /// The binary's six tasks and 100 schedules not yet due, after a run
    /// (the due summary answers; the schedules task is not asked).
    #[divan::bench(args = JOURNALS)]
    fn schedules_100_idle(bencher: Bencher, journal: &str) {
        let fx = fixture(journal, false);
        email_ready(&fx);
        add_schedules(&fx, 100);
        let tasks = binary_tasks();
        serviced(&fx, &tasks);
        let bo = Backoffice::new(tasks);
        run_check(bencher, &fx, &bo, |c| {
            matches!(c, Check::NothingDue { next: Some(_) })
        });
    }

    /// The same without the summary: every task is asked, the schedules
    /// task parsing its 100 rows (what the summary saves).
    #[divan::bench(args = JOURNALS)]
    fn schedules_100_no_summary(bencher: Bencher, journal: &str) {
        let fx = fixture(journal, false);
        email_ready(&fx);
        add_schedules(&fx, 100);
        let bo = Backoffice::new(binary_tasks());
        run_check(bencher, &fx, &bo, |c| {
            matches!(c, Check::NothingDue { next: Some(_) })
        });
    }

    /// The binary's six tasks, email set up, no hooks, webhooks or peers
    /// configured, nothing new, as a repository is after a run: the run
    /// wrote the due summary, and the check reads it (one statement; no
    /// task is asked).
    #[divan::bench(args = JOURNALS)]
    fn binary_tasks_idle(bencher: Bencher, journal: &str) {
        let fx = fixture(journal, false);
        email_ready(&fx);
        let tasks = binary_tasks();
        serviced(&fx, &tasks);
        let bo = Backoffice::new(tasks);
        run_check(bencher, &fx, &bo, |c| {
            matches!(c, Check::NothingDue { next: Some(_) })
        });
    }

    /// `binary_tasks_idle` right after another connection committed
    /// something that makes no work (a row in a table no task watches;
    /// untimed): the database's stamp changed, so the check reads the
    /// summary again (the statement, after the stamp read) instead of
    /// giving its kept answer — what the first check after
    /// any write costs. One check per sample, each after its own commit.
    #[divan::bench(args = JOURNALS, sample_size = 1, sample_count = 300)]
    fn binary_tasks_after_a_commit(bencher: Bencher, journal: &str) {
        let fx = fixture(journal, false);
        email_ready(&fx);
        let tasks = binary_tasks();
        serviced(&fx, &tasks);
        let other = Connection::open(fx.path()).expect("open");
        // No fsync: the disk's work after each commit would otherwise land
        // on the timed check (interrupts, writeback) and swamp it.
        other
            .execute_batch(
                "PRAGMA synchronous=OFF;
                 CREATE TABLE unwatched(n INTEGER); INSERT INTO unwatched VALUES (0);",
            )
            .expect("a table");
        let bo = Backoffice::new(tasks);
        let first = bo.check_if_needed(&fx.conn);
        assert!(
            matches!(first, Check::NothingDue { next: Some(_) }),
            "{first:?}"
        );
        bencher
            .with_inputs(|| {
                other
                    .execute("UPDATE unwatched SET n = n + 1", [])
                    .expect("a commit")
            })
            .bench_local_values(|_| black_box(bo.check_if_needed(black_box(&fx.conn))));
    }

    /// The same without the summary (a repository no run of this version
    /// has serviced yet, or just after a write that made work): every task
    /// is asked, as every check did before the summary.
    #[divan::bench(args = JOURNALS)]
    fn binary_tasks_no_summary(bencher: Bencher, journal: &str) {
        let fx = fixture(journal, false);
        let next = email_ready(&fx);
        let bo = Backoffice::new(binary_tasks());
        run_check(
            bencher,
            &fx,
            &bo,
            |c| matches!(c, Check::NothingDue { next: Some(t) } if *t == next),
        );
    }

    #[divan::bench(args = JOURNALS)]
    fn outbox_pending(bencher: Bencher, journal: &str) {
        let fx = fixture(journal, true);
        let bo = Backoffice::new(outbox());
        run_check(bencher, &fx, &bo, Check::is_needed);
    }

    /// A live process recorded on deck: a `sleep` child, killed at the end.
    struct OnDeck {
        fx: Fixture,
        child: Child,
    }

    impl OnDeck {
        fn new(journal: &str) -> OnDeck {
            // Pending work too, so that a wrong "not alive" would show as `Needed`.
            let fx = fixture(journal, true);
            let child = Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sleep");
            let pid = i64::from(child.id());
            let stat = process::proc_stat(pid).expect("/proc/PID/stat of the sleep child");
            let now = backoffice::clock::now();
            let lease = Lease {
                current: process::Identity::current().slot(now + 3600, Some(now + 3600)),
                next: Slot {
                    pid,
                    expires: now + 3600,
                    start: Some(stat.start),
                    ns: process::pid_namespace(),
                    alive_until: Some(now + 3600),
                },
                boot: process::boot_id().map(str::to_owned),
                term: 0,
            };
            config_set(&fx.conn, LEASE_ROW, &lease.encode()).expect("write lease");
            OnDeck { fx, child }
        }
    }

    impl Drop for OnDeck {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn is_ondeck(c: &Check) -> bool {
        matches!(c, Check::OnDeck { .. })
    }

    #[divan::bench(args = JOURNALS)]
    fn ondeck_cached(bencher: Bencher, journal: &str) {
        let od = OnDeck::new(journal);
        let bo = Backoffice::new(outbox());
        run_check(bencher, &od.fx, &bo, is_ondeck);
    }

    #[divan::bench(args = JOURNALS)]
    fn ondeck_fresh(bencher: Bencher, journal: &str) {
        let od = OnDeck::new(journal);
        assert!(is_ondeck(
            &Backoffice::new(outbox()).check_if_needed(&od.fx.conn)
        ));
        bencher
            .with_inputs(|| Backoffice::new(outbox()))
            .bench_local_refs(|bo| black_box(bo.check_if_needed(black_box(&od.fx.conn))));
    }
}

/// The pieces of the check, to see where its time goes.
mod parts {
    use super::*;

    /// `/proc/PID/stat` read and parsed (what an uncached on-deck check adds;
    /// one read into a stack buffer since the A/B in `results/check_ab.txt`).
    #[divan::bench]
    fn proc_stat_self() -> Option<process::ProcStat> {
        process::proc_stat(black_box(i64::from(std::process::id())))
    }

    /// `kill(pid, 0)` (what a cached on-deck check adds).
    #[divan::bench]
    fn kill0_self() -> bool {
        process::exists(black_box(i64::from(std::process::id())))
    }

    /// The two config rows the check reads, alone (rollback vs WAL read
    /// transaction).
    #[divan::bench(args = JOURNALS)]
    fn config_rows(bencher: Bencher, journal: &str) {
        let fx = fixture(journal, false);
        bencher.bench_local(|| {
            let mut s = fx
                .conn
                .prepare_cached("SELECT name, value FROM config WHERE name IN (?1, ?2)")
                .unwrap();
            let mut q = s.query([LEASE_ROW, "backoffice-disable"]).unwrap();
            let mut n = 0;
            while let Some(_r) = q.next().unwrap() {
                n += 1;
            }
            n
        });
    }

    /// The outbox task's `due` alone.
    #[divan::bench(args = JOURNALS)]
    fn outbox_due(bencher: Bencher, journal: &str) {
        let fx = fixture(journal, false);
        bencher.bench_local(|| Outbox.due(black_box((&fx.conn).into()), 0).unwrap());
    }

    /// What the check pays to never wait for a lock: reading the host's
    /// busy timeout, lowering it and putting it back (issue 10, item 13).
    #[divan::bench(args = JOURNALS)]
    fn short_busy_guard(bencher: Bencher, journal: &str) {
        let fx = fixture(journal, false);
        bencher.bench_local(|| {
            drop(black_box(backoffice::repo::ShortBusy::new(
                &fx.conn,
                backoffice::repo::CHECK_BUSY_TIMEOUT,
            )))
        });
    }

    /// One config row by primary key (the query `crates.md` measured).
    #[divan::bench(args = JOURNALS)]
    fn config_one_row(bencher: Bencher, journal: &str) {
        let fx = fixture(journal, false);
        bencher.bench_local(|| backoffice::repo::config_get(&fx.conn, "filler-100").unwrap());
    }
}

mod lease {
    use super::*;

    /// A lease as Fossil writes it, and one as we write it.
    #[derive(Clone, Copy, Debug)]
    enum Text {
        Fossil,
        Ours,
    }

    impl Text {
        fn text(self) -> &'static str {
            match self {
                Text::Fossil => "12345 1795261729 0 0",
                Text::Ours => {
                    "12345 1795261729 12399 1795261790 cur-start=123456789 \
                     next-start=123456999 boot=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
                }
            }
        }
    }

    const TEXTS: &[Text] = &[Text::Fossil, Text::Ours];

    #[divan::bench(args = TEXTS)]
    fn parse(text: Text) -> Lease {
        Lease::parse(black_box(text.text()))
    }

    #[divan::bench(args = TEXTS)]
    fn encode(bencher: Bencher, text: Text) {
        let lease = Lease::parse(text.text());
        assert_eq!(lease.encode(), text.text());
        bencher.bench_local(|| black_box(&lease).encode());
    }
}
