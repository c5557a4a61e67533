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
//! The engine:
//!
//! * [`lease`]: the lease value and its text codec (Fossil's four integers
//!   plus our extension fields). Total parsing.
//! * [`process`]: process identity and liveness (pid, start time, boot id,
//!   zombies); starting, detaching and reaping workers.
//! * [`repo`]: opening a repository; the `config` table.
//! * [`settings`]: every setting, defined once.
//! * [`engine`]: the worker loop — current, on deck, no-delay — and the run.
//! * [`task`]: the [`Task`] trait, the task list, the run log.
//! * [`trigger`]: the after-request check and starting a worker.
//! * [`poll`]: servicing many repositories in one sweep, or forever.
//! * [`status`]: what `backoffice status` reports.
//! * [`clock`]: Unix seconds and their human forms.
//! * [`token`]: the per-repository API bearer token of a web front (only
//!   its hash is stored).
//!
//! The tasks the `backoffice` binary ships, in the order they run (the first
//! three fed by the events applications publish):
//!
//! * [`notify`]: events, subscribers, email alerts and daily digests, the
//!   outbox and its send methods (the `alerts` task).
//! * [`hooks`]: shell hooks run on new events, each with its own cursor,
//!   retried with backoff (the `hooks` task).
//! * [`webhooks`]: signed HTTP deliveries of events, in order, retried (the
//!   `webhooks` task).
//! * [`replicate`]: consistent copies of the repository on peers (file
//!   paths), through SQLite's online backup API (the `replicate` task).
//! * [`maintain`]: the database's own upkeep — `PRAGMA optimize`, WAL
//!   checkpoints, incremental vacuum, `quick_check` (failures mailed to
//!   `email-admin`), old sent messages deleted (the `maintenance` task).
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

#![warn(missing_docs)]

pub mod child;
pub mod clock;
pub mod engine;
mod error;
pub mod events;
pub mod lease;
pub mod ledger;
pub mod poll;
pub mod process;
pub mod repo;
pub mod settings;
pub mod status;
pub mod task;
pub mod token;
pub mod trigger;
pub mod writes;

pub use engine::{Outcome, RunOptions};
pub use error::{Error, Result};
pub use lease::{Lease, Slot};
pub use repo::Repo;
pub use task::{Context, Due, Task, TaskError, Tasks};
pub use trigger::{Backoffice, Check, Started, worker_main};
