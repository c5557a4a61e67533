//! `backoffice`: the background-work engine of the Fossil SCM server, made
//! standalone for any service whose state lives in SQLite.
//!
//! # The model
//!
//! There is no daemon. After each successful web request, the host runs a
//! cheap, read-only check on the connection it already has open
//! ([`Backoffice::after_request`]). If some [`Task`] has work due and no
//! worker is already queued for it, the check starts a detached worker
//! process and the request goes on without waiting.
//!
//! The worker takes a **lease** stored in the repository's own `config`
//! table (row `backoffice`, the value Fossil uses), inside one `BEGIN
//! IMMEDIATE` transaction, so SQLite serialises every decision about it:
//!
//! * at most one worker does work at a time;
//! * runs are at least one lease time `L` apart (`backoffice-lease-time`,
//!   default 60 s);
//! * at most one more worker waits *on deck* behind the current one, so at
//!   most two worker processes exist per repository, and an idle server has
//!   none;
//! * work left behind by a request runs within `L` seconds.
//!
//! Manual and cron runs (`backoffice run`, [`poll`]) go through the same lease.
//!
//! Beyond Fossil: a lease holder is identified by pid *and* process start
//! time and boot id, so a reused pid or a zombie never stalls the engine
//! ([`process`]); the check also asks whether anything is due, so read-only
//! traffic starts no workers; every failure to start or run a worker is
//! logged; and many repositories are swept in parallel in one process.
//!
//! # Layout
//!
//! The engine — it knows no task:
//!
//! * `lease.rs`: the lease value ([`Lease`], [`Slot`]) and its text codec
//!   (Fossil's four integers plus our extension fields). Total parsing.
//! * [`process`]: process identity and liveness (pid, start time, boot id,
//!   zombies); starting, detaching and reaping workers.
//! * [`repo`]: opening a repository; the `config` table; transactions.
//! * `engine.rs`: the worker loop — current, on deck, no-delay — and the
//!   run ([`run`], [`RunOptions`], [`Outcome`]).
//! * `task.rs`: the [`Task`] trait, the task list ([`Tasks`]), the run log
//!   ([`RunReport`]).
//! * `trigger.rs`: the after-request check and starting a worker
//!   ([`Backoffice`], [`worker_main`]); `stamp.rs`: a lock-free stamp of a
//!   database's committed state, with which the check keeps its answer.
//! * [`poll`]: servicing many repositories in one sweep, or forever.
//! * [`status`]: what `backoffice status` reports.
//! * [`clock`]: Unix seconds and their human forms.
//! * [`token`]: the per-repository API bearer token of a web front (only
//!   its hash is stored).
//!
//! What the engine offers every task (the shipped ones and a host's own):
//!
//! * [`settings`]: the settings registry; a task declares its own
//!   ([`Task::settings`]) and the `setting` command, `status` and the
//!   status page show them.
//! * [`events`]: the event log applications publish to, which tasks read
//!   after cursors of their own, and its retention (`event-retention-days`:
//!   only what every task is done with is deleted, [`Task::events_done`]).
//! * [`ledger`]: the retry ledger — per target, a cursor, failures in a
//!   row, the next attempt, the last error and output — and the one
//!   backoff policy.
//! * [`writes`]: the backoffice's own writes, told apart from the
//!   application's (a task that writes on a timer goes through it).
//! * [`child`]: running a command for a task (a hook, a mail pipe) under a
//!   guard that ends its whole process tree with the worker.
//!
//! The tasks the `backoffice` binary ships (alerts and digests, hooks,
//! webhooks, replication, maintenance) are in the `backoffice-tasks`
//! crate, which uses only this crate's public API.
//!
//! # Embedding
//!
//! ```no_run
//! use backoffice::{Backoffice, Tasks};
//! # fn handle_request(_: &rusqlite::Connection) {}
//! let bo = Backoffice::new(Tasks::new() /* .with(MyTask) */);
//! let conn = rusqlite::Connection::open("app.db")?;
//! handle_request(&conn);
//! // After the reply is sent:
//! bo.after_request(&conn);
//! # Ok::<(), rusqlite::Error>(())
//! ```
//!
//! The worker is the current executable re-run as `EXE worker REPO`; a host
//! built on `backoffice-cli` handles that for free, others set a
//! [`process::WorkerCommand`].

#![deny(missing_docs)]

// The engine's own modules are private: what they offer is re-exported
// below. The public modules are facilities a task or a host calls by name
// (`backoffice::events::publish`, `backoffice::ledger::failed`, …).
pub mod child;
pub mod clock;
pub mod db;
pub mod due;
mod engine;
mod error;
pub mod events;
pub mod history;
mod lease;
pub mod ledger;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod poll;
pub mod process;
pub mod repo;
pub mod settings;
mod stamp;
pub mod status;
mod task;
pub mod token;
mod trigger;
pub mod writes;

pub use db::Db;
pub use engine::{HEARTBEAT_GRACE_BEATS, LEASE_ROW, Outcome, RunOptions, read_lease, run};
pub use error::{Error, Result};
pub use lease::{Lease, Slot};
pub use repo::Repo;
pub use task::{
    Context, Due, Gauge, Partial, RunReport, RunTotals, Task, TaskError, TaskResult, TaskStatus,
    Tasks, short_line,
};
pub use task::{LAST_RUN_ROW, TOTALS_ROW};
pub use trigger::{Backoffice, Check, Started, worker_main};

/// The lease decision and the `/proc` parser, for the fuzz targets in
/// `fuzz/` only: not part of the API, and may change in any release.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::engine::{Decision, Me, Plan, decide, overrun, overrun_message};
}
