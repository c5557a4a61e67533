//! Scheduled work without a cron daemon (issue 15): periodic jobs that
//! run once per slot.
//!
//! A schedule is a task that knows when it is next due: the after-request
//! check and the cron sweep find it with nothing written, through the due
//! summary, and the lease makes sure one worker runs it.
//!
//! # Layout
//!
//! * [`slots`]: when a schedule's slots fall — five-field cron patterns on
//!   a time zone's wall clock (gaps and folds included) or plain
//!   intervals — and which slots have passed since the last one ran.
//! * [`store`]: the `bo_schedule` table and the commands' operations on it
//!   (add, list, remove, pause, resume, run now).
//! * [`task`]: the `schedules` task — what is due, claiming a slot before
//!   its command starts and recording its outcome after, catch-up,
//!   retries, status.
//!
//! Both stores: on a PostgreSQL schema the table is the schema's, the
//! slots are read on the database's clock, every write is fenced on the
//! run's term, and a command's exit status is left in this host's
//! temporary folder (a worker on another host runs a slot whose worker
//! died after its command again: at least once there).

pub mod slots;
pub mod store;
pub mod task;

pub use task::Schedules;
