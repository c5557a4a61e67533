//! One open repository, on either store: an SQLite file ([`Repo`]) or a
//! PostgreSQL schema ([`PgConn`]). The routes ask it for what they show
//! and change — the status, recent events, publishing, subscribers, the
//! token — and never look at which store it is; each call below picks the
//! store's own function.
//!
//! Errors stay typed ([`backoffice::Error`], [`DbError`],
//! [`SubscriberError`], [`PublishError`]); `respond.rs` turns them into
//! replies.

use backoffice::db::DbError;
use backoffice::events::{Event, PublishError, StoredEvent};
use backoffice::pg::PgConn;
use backoffice::status::Status;
use backoffice::{Db, Repo, Tasks};
use backoffice_tasks::notify::pg as notify_pg;
use backoffice_tasks::notify::subscribers::{self, New, Subscriber, SubscriberError};

/// An open repository.
pub enum Store {
    /// An SQLite repository file.
    File(Repo),
    /// A PostgreSQL schema (boxed: a session is much larger than a file's
    /// connection).
    Pg(Box<PgConn>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::File(r) => write!(f, "Store::File({})", r.path().display()),
            // The URL's Display hides the password.
            Store::Pg(c) => write!(f, "Store::Pg({})", c.url()),
        }
    }
}

impl Store {
    /// The portable handle, for the facilities that take one (the token).
    pub fn db(&self) -> Db<'_> {
        match self {
            Store::File(r) => Db::Sqlite(r.conn()),
            Store::Pg(c) => Db::Postgres(c),
        }
    }

    /// True if the connection may go back to the pool: not left inside a
    /// transaction (a handler that failed half-way), and for PostgreSQL
    /// still connected (a restarted server closes every session).
    pub fn reusable(&self) -> bool {
        match self {
            Store::File(r) => r.conn().is_autocommit(),
            Store::Pg(c) => c.is_usable(),
        }
    }

    /// The repository's status; on PostgreSQL with the cluster view.
    pub fn status(&self, tasks: &Tasks) -> backoffice::Result<Status> {
        match self {
            Store::File(r) => backoffice::status::status(r, tasks),
            Store::Pg(c) => backoffice::pg::status(c, tasks),
        }
    }

    /// The newest `n` events, newest first.
    pub fn recent_events(&self, n: usize) -> Result<Vec<StoredEvent>, DbError> {
        backoffice::events::recent(self.db(), n)
    }

    /// Publishes `ev`; returns its id (on PostgreSQL its insertion id: its
    /// position in the log is given by the next worker).
    pub fn publish(&self, ev: &Event) -> Result<i64, PublishError> {
        match self {
            Store::File(r) => backoffice::events::publish(r.conn(), ev),
            Store::Pg(c) => {
                let schema = c.url().schema().to_owned();
                backoffice::pg::publish(&mut *c.client(), &schema, ev)
            }
        }
    }

    /// Every subscriber.
    pub fn subscribers(&self) -> Result<Vec<Subscriber>, SubscriberError> {
        match self {
            Store::File(r) => subscribers::list(r.conn()),
            Store::Pg(c) => notify_pg::subscriber_list(Db::Postgres(c)),
        }
    }

    /// Adds a subscriber.
    pub fn add_subscriber(&self, new: &New) -> Result<Subscriber, SubscriberError> {
        match self {
            Store::File(r) => {
                backoffice::repo::immediate(r.conn(), || subscribers::add(r.conn(), new))
            }
            Store::Pg(c) => notify_pg::subscriber_add(Db::Postgres(c), new),
        }
    }

    /// Removes a subscriber, by address or id.
    pub fn remove_subscriber(&self, who: &str) -> Result<Subscriber, SubscriberError> {
        match self {
            Store::File(r) => {
                backoffice::repo::immediate(r.conn(), || subscribers::remove(r.conn(), who))
            }
            Store::Pg(c) => notify_pg::subscriber_remove(Db::Postgres(c), who),
        }
    }

    /// The subscriber holding an unsubscribe code (changes nothing).
    pub fn subscriber_by_code(&self, code: &str) -> Result<Option<Subscriber>, SubscriberError> {
        match self {
            Store::File(r) => subscribers::find_by_code(r.conn(), code),
            Store::Pg(c) => notify_pg::subscriber_by_code(Db::Postgres(c), code),
        }
    }

    /// Unsubscribes whoever holds `code`: their address, or `None`.
    pub fn unsubscribe_by_code(&self, code: &str) -> Result<Option<String>, SubscriberError> {
        match self {
            Store::File(r) => backoffice::repo::immediate(r.conn(), || {
                subscribers::unsubscribe_by_code(r.conn(), code)
            }),
            Store::Pg(c) => notify_pg::unsubscribe_by_code(Db::Postgres(c), code),
        }
    }

    /// Queues dead outbox messages again (one, or all with `None`): how
    /// many.
    pub fn outbox_retry(&self, id: Option<i64>, now: i64) -> Result<u64, DbError> {
        match self {
            Store::File(r) => backoffice::repo::immediate(r.conn(), || {
                backoffice_tasks::notify::outbox::retry(r.conn(), id, now)
            })
            .map(|n| n as u64)
            .map_err(DbError::Sqlite),
            Store::Pg(c) => notify_pg::outbox_retry(Db::Postgres(c), id, now),
        }
    }
}
