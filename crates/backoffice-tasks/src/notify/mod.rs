//! Notifications: events, subscribers, immediate alerts, daily digests.
//!
//! # The model
//!
//! An application **publishes events** ([`backoffice::events::publish`]) inside its own
//! transaction, so an event commits or rolls back with the data it is
//! about. Publishing is one `INSERT`; it makes the [`Notify`] task due, so
//! the next request's check starts a worker.
//!
//! **Subscribers** ([`subscribers`]) have an address, the event kinds they
//! want, and a mode: immediate alerts or one daily digest. Only verified,
//! not unsubscribed subscribers get mail.
//!
//! In each worker run the task:
//!
//! 1. turns new events into messages for the matching immediate
//!    subscribers — one per subscriber listing the run's events, or one per
//!    event (`email-alert-mode`) — and writes them to the **outbox** in the
//!    same transaction that marks the events handled;
//! 2. once the digest time (`email-digest-time`) has passed, writes one
//!    digest per digest subscriber covering the events since the last one
//!    (none when there were none);
//! 3. delivers the outbox messages that are due through the send method
//!    (`email-send-method`), recording each outcome.
//!
//! **Nothing is lost, nothing is sent twice.** Fossil marks alerts as sent
//! *before* sending, so a failed send is gone. Here a message exists in the
//! outbox before anyone tries to send it; a failed attempt leaves it queued
//! with its error and a later attempt time (exponential backoff); after
//! `email-max-attempts` it is *dead*, with its reason, until an operator
//! retries or purges it (`backoffice outbox`). Each message's `Message-ID`
//! is derived from a random token minted when it is queued (never reused,
//! across purges and copies of the repository), and each finished send is
//! journalled before the next one starts, so a worker killed mid-run causes
//! at most one duplicate per connection, with the same `Message-ID`, which
//! mail clients recognise as such (see [`outbox`]).
//!
//! # Schema
//!
//! Created on first use in the application's database; any language can
//! publish with plain SQL (`INSERT INTO bo_event(kind, title, body, url,
//! author, mtime) VALUES (...)`). See the README for the columns.
//!
//! # Layout
//!
//! * `address.rs`: address validation.
//! * `subscribers.rs`: adding, listing, changing subscribers.
//! * `compose.rs`: the text of alerts and digests.
//! * `message.rs`: building a MIME message (lettre) with its headers.
//! * `send.rs`: the send methods (`Transport`); `smtp.rs`: SMTP relay.
//! * `outbox.rs`: delivery, retries, dead letters.
//! * `signup.rs`: self-service sign-up, double opt-in (confirmation links,
//!   rate limits).
//! * `schedule.rs`: when digests are due, in a time zone.
//! * `task.rs`: the [`Notify`] task that ties them together.
//! * `pg.rs`: the same on a PostgreSQL repository (cursors in the retry
//!   ledger instead of marks in `bo_event`, every progress write fenced).

pub(crate) mod address;
pub(crate) mod compose;
pub(crate) mod config;
pub(crate) mod message;
pub mod outbox;
pub mod pg;
pub mod schedule;
pub mod send;
pub mod signup;
pub mod smtp;
pub mod subscribers;
mod task;

pub use task::Notify;

use rusqlite::Connection;

// The event log is the engine's; the submodules read it through these.
use backoffice::events::{one_line, stored_event, valid_kind};

/// The notification tables (subscribers and the outbox; the events are the
/// engine's, [`backoffice::events`]). `IF NOT EXISTS` throughout:
/// installing is idempotent and happens on first use.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bo_subscriber(
  subscriberid INTEGER PRIMARY KEY,
  address TEXT NOT NULL UNIQUE COLLATE NOCASE,
  name TEXT,
  kinds TEXT NOT NULL DEFAULT '*',
  digest INTEGER NOT NULL DEFAULT 0,
  verified INTEGER NOT NULL DEFAULT 0,
  donotcall INTEGER NOT NULL DEFAULT 0,
  code TEXT NOT NULL UNIQUE,
  ctime INTEGER NOT NULL,
  mtime INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bo_outbox(
  msgid INTEGER PRIMARY KEY,
  subscriberid INTEGER,
  address TEXT NOT NULL,
  kind TEXT NOT NULL,
  subject TEXT NOT NULL,
  body TEXT NOT NULL,
  code TEXT,
  ctime INTEGER NOT NULL,
  state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sent', 'dead')),
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt INTEGER NOT NULL,
  last_error TEXT,
  sent_time INTEGER,
  token TEXT,
  gen INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS bo_outbox_due ON bo_outbox(next_attempt) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS bo_outbox_dead ON bo_outbox(msgid) WHERE state = 'dead';
";

/// Creates the notification tables if they are missing.
pub fn install(conn: &Connection) -> rusqlite::Result<()> {
    backoffice::events::install(conn)?;
    conn.execute_batch(SCHEMA)?;
    // A message queued (by SQL too) or retried lowers the due summary.
    backoffice::due::watch(conn, "bo_outbox")?;
    // An outbox made by an older version lacks the newer columns.
    outbox::upgrade(conn)
}
