//! The cost of the hooks task when nothing is new (target: ≤ 1 ms per run
//! with 10 hooks), and of its after-request `due` check, on a file
//! database in WAL and rollback-journal mode.
//!
//! cargo bench -p backoffice --bench hooks

use backoffice::events::{self, Event};
use backoffice::{Context, Task};
use backoffice_tasks::hooks::{self, Hooks, New};
use divan::Bencher;
use rusqlite::Connection;

fn main() {
    divan::main();
}

/// A repository with 10 hooks, all up to date with 100 events.
fn open(journal: &str) -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join("app.db")).unwrap();
    conn.pragma_update(None, "journal_mode", journal).unwrap();
    conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
        .unwrap();
    for i in 0..100 {
        events::publish(
            &conn,
            &Event {
                kind: "wiki".into(),
                title: format!("Event {i}"),
                ..Event::default()
            },
        )
        .unwrap();
    }
    for i in 0..10 {
        hooks::add(
            &conn,
            &New {
                cmd: format!("my-hook-{i} --repo %R"),
                seq: Some(i),
                kind: hooks::AFTER_EVENT.into(),
                from_start: false,
            },
        )
        .unwrap();
    }
    (dir, conn)
}

#[divan::bench(args = ["wal", "delete"], sample_count = 2000)]
fn run_with_10_hooks_nothing_new(bencher: Bencher, journal: &str) {
    let (dir, conn) = open(journal);
    let path = dir.path().join("app.db");
    let ctx = Context {
        db: backoffice::Db::Sqlite(&conn),
        repo: &path,
        now: backoffice::clock::now(),
        debug: false,
        term: 0,
    };
    bencher.bench_local(|| assert_eq!(Hooks.run(&ctx).unwrap(), 0));
}

#[divan::bench(args = ["wal", "delete"], sample_count = 2000)]
fn due_with_10_hooks_nothing_new(bencher: Bencher, journal: &str) {
    let (_dir, conn) = open(journal);
    let now = backoffice::clock::now();
    bencher.bench_local(|| Hooks.due((&conn).into(), now).unwrap());
}
