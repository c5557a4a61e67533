//! The README's embedding example ("From a Rust host"), verbatim below the
//! marker line: the test suite builds it (`cargo test` builds examples) and
//! checks that the README still shows exactly this code
//! (`layout::the_readme_embedding_example_is_this_file`).
//!
//! It expects an `app.db` with a `queue(done)` table; run it as
//! `cargo run -p backoffice-cli --example embed` in a folder that has one.
// ---- README ----
use backoffice::{Backoffice, Context, Db, Due, Task, TaskError, Tasks};
use rusqlite::Connection;

struct SendQueued;
impl Task for SendQueued {
    fn name(&self) -> &str {
        "send"
    }
    fn due(&self, db: Db<'_>, _now: i64) -> Result<Due, TaskError> {
        // A point lookup: this runs after every request.
        let pending = db.query_opt("SELECT 1 FROM queue WHERE done = 0 LIMIT 1", &[])?;
        Ok(if pending.is_some() {
            Due::Now
        } else {
            Due::Never
        })
    }
    fn run(&self, ctx: &Context<'_>) -> Result<u64, TaskError> {
        // ... do the work; record progress in a write fenced on the run's
        // term (refused if another worker took the lease over meanwhile).
        // The same SQL runs on SQLite and PostgreSQL; ctx.db.sqlite_only()
        // hands over the rusqlite connection instead.
        let done = ctx.db.write(Some(ctx.term), |db| {
            db.execute("UPDATE queue SET done = 1 WHERE done = 0", &[])
        })?;
        Ok(done)
    }
}

fn tasks() -> Tasks {
    Tasks::new().with(SendQueued)
}

fn main() -> std::process::ExitCode {
    // Workers are this executable re-run as `EXE worker REPO`:
    // backoffice_cli handles that (and every other command) for you.
    if std::env::args().nth(1).as_deref() == Some("worker") {
        return backoffice_cli::main(tasks());
    }
    let bo = Backoffice::new(tasks()); // keep one per process
    let conn = Connection::open("app.db").unwrap();
    // ... serve a request with `conn`, send the reply, then:
    bo.after_request(&conn); // never blocks on the work
    std::process::ExitCode::SUCCESS
}
