//! What publishing an event adds to an application's transaction (target:
//! ≤ 20 µs), on a file database in WAL and rollback-journal mode, inside an
//! open transaction (the commit is the application's and not counted).
//!
//! cargo bench -p backoffice --bench notify

use backoffice::events::{self, Event};
use backoffice_tasks::notify;
use divan::Bencher;
use rusqlite::Connection;

fn main() {
    divan::main();
}

fn open(journal: &str) -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join("app.db")).unwrap();
    conn.pragma_update(None, "journal_mode", journal).unwrap();
    conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
        .unwrap();
    notify::install(&conn).unwrap();
    (dir, conn)
}

#[divan::bench(args = ["wal", "delete"], sample_count = 2000)]
fn publish_in_transaction(bencher: Bencher, journal: &str) {
    let (_dir, conn) = open(journal);
    publish_loop(bencher, &conn);
}

/// The same without the due summary's trigger on `bo_event` (as before the
/// summary): the difference is what keeping the summary adds to a publish.
/// (`publish_in_transaction` has it: the trigger deletes the summary row,
/// a lookup that finds nothing after the first event of a burst.)
#[divan::bench(args = ["wal", "delete"], sample_count = 2000)]
fn publish_without_due_trigger(bencher: Bencher, journal: &str) {
    let (_dir, conn) = open(journal);
    conn.execute_batch("DROP TRIGGER bo_due_bo_event_ins; DROP TRIGGER bo_due_bo_event_upd")
        .unwrap();
    publish_loop(bencher, &conn);
}

/// The same once the webhooks task has run on the repository: its AFTER
/// INSERT trigger gives each new event a random uid (delivery ids never
/// repeat across copies), one more UPDATE per publish.
#[divan::bench(args = ["wal", "delete"], sample_count = 2000)]
fn publish_with_webhooks_uid(bencher: Bencher, journal: &str) {
    let (_dir, conn) = open(journal);
    backoffice::events::ensure_uid(&conn).unwrap();
    publish_loop(bencher, &conn);
}

fn publish_loop(bencher: Bencher, conn: &Connection) {
    let ev = Event {
        kind: "wiki".into(),
        title: "Front page edited by somebody with a fairly long title".into(),
        body: "A body of a few hundred bytes. ".repeat(10),
        url: Some("https://example.org/wiki/Front".into()),
        author: Some("alice".into()),
        time: None,
    };
    conn.execute_batch("BEGIN").unwrap();
    let mut n = 0u32;
    bencher.bench_local(|| {
        n += 1;
        // Keep the open transaction from growing without bound.
        if n % 10_000 == 0 {
            conn.execute_batch("COMMIT; BEGIN").unwrap();
        }
        events::publish(conn, &ev).unwrap()
    });
    conn.execute_batch("COMMIT").unwrap();
}
