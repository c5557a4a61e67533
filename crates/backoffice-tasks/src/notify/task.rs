//! The `Notify` task: compose alerts (and digests), then deliver.

use rusqlite::{Connection, TransactionBehavior, params};

use super::compose::{self, EventText};
use super::config::{EmailConfig, Method};
use super::outbox;
use super::schedule::{DigestDue, DigestTime};
use backoffice::db::DbError;
use backoffice::{Context, Db, Due, Gauge, Task, TaskError, TaskStatus};

/// Events older than this when first seen get no immediate alert (they
/// still appear in digests): turning email on after a month must not mail
/// a month of alerts.
pub(crate) const FRESH_FOR: i64 = 24 * 3600;
/// Events composed per transaction.
pub(crate) const EVENT_BATCH: i64 = 1000;
/// Most events listed in one digest.
pub(crate) const DIGEST_MAX_EVENTS: usize = 500;
/// The `config` row holding the last digest boundary sent (Unix seconds).
/// Not Fossil's `email-last-digest`, which holds a Julian day number.
pub(crate) const LAST_DIGEST: &str = "email-last-digest-boundary";

/// Email alerts, digests and their delivery, as one engine task.
///
/// Its `due` is a single statement over three indexed lookups (new events,
/// the earliest queued message, the send method), so the after-request
/// check stays cheap.
#[derive(Clone, Copy, Debug, Default)]
pub struct Notify;

impl Task for Notify {
    fn name(&self) -> &str {
        "alerts"
    }

    /// What makes it due: new events, a message queued or retried, settings (see `backoffice::due`).
    fn due_watches(&self) -> Option<&'static [&'static str]> {
        Some(&["bo_outbox"])
    }

    fn settings(&self) -> &'static [backoffice::settings::Def] {
        super::config::SETTINGS
    }

    fn due(&self, db: Db<'_>, now: i64) -> Result<Due, TaskError> {
        let Some(conn) = db.sqlite() else {
            return super::pg::due(db, now);
        };
        // A schema lookup, no statement (Fossil's check does the same): in a
        // repository that never published an event, preparing the query
        // below would fail and be parsed again on every request (~10 µs).
        if !conn.table_exists(None, "bo_outbox")? {
            return Ok(Due::Never);
        }
        let row = conn
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM bo_event WHERE alerted = 0),
                        (SELECT min(next_attempt) FROM bo_outbox WHERE state = 'queued'),
                        (SELECT value FROM config WHERE name = 'email-send-method'),
                        (SELECT value FROM config WHERE name = 'email-digest-time'),
                        (SELECT value FROM config WHERE name = ?1)",
            )
            .and_then(|mut s| {
                s.query_row([LAST_DIGEST], |r| {
                    Ok((
                        r.get::<_, bool>(0)?,
                        r.get::<_, Option<i64>>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ))
                })
            });
        let (new_events, next_send, method, digest_time, last_digest) = match row {
            Ok(r) => r,
            // No notification tables: nothing was ever published.
            Err(e) if backoffice::repo::is_no_such_table(&e) => return Ok(Due::Never),
            Err(e) => return Err(e.into()),
        };
        if method
            .as_deref()
            .is_none_or(|m| m.trim().eq_ignore_ascii_case("off"))
        {
            return Ok(Due::Never);
        }
        if new_events {
            return Ok(Due::Now);
        }
        let send = match next_send {
            Some(t) if t <= now => Due::Now,
            Some(t) => Due::At(t),
            None => Due::Never,
        };
        let digest = digest_time
            .and_then(|t| DigestTime::parse(&t).ok())
            .unwrap_or_default()
            .digest_due(last_digest.and_then(|v| v.trim().parse().ok()), now)
            .task_due();
        Ok(send.earliest(digest))
    }

    fn run(&self, ctx: &Context<'_>) -> Result<u64, TaskError> {
        // A worker runs every task; when it was started for another one,
        // this costs what the after-request check costs, not the reading of
        // every email setting and the opening of a transport.
        if self.due(ctx.db, ctx.now)? != Due::Now {
            return Ok(0);
        }
        let Some(conn) = ctx.db.sqlite() else {
            return super::pg::run(ctx.db, ctx.term, ctx.now);
        };
        if !has_tables(conn)? {
            return Ok(0);
        }
        let cfg = match EmailConfig::load(conn) {
            Ok(c) if c.method == Method::Off => return Ok(0),
            Ok(c) => c,
            Err(problems) => return Err(problems.join("; ").into()),
        };
        let project = backoffice::repo::project_name(conn, ctx.repo);
        // Every progress write is fenced on the run's term: containers
        // sharing one repository file each have their worker, and one
        // paused past its heartbeat must not record over the next holder.
        let fence = Some(ctx.term);
        while compose_alerts(conn, &cfg, &project, ctx.now, fence)? == EVENT_BATCH as usize {}
        compose_digests(conn, &cfg, &project, ctx.now, fence)?;
        // Open a transport (a connection, a file) only for something to send.
        if outbox::next_due(conn)?.is_none_or(|t| t > ctx.now) {
            return Ok(0);
        }
        let mut transport = cfg.transport()?;
        let journal = outbox::journal_path(ctx.repo);
        let d = outbox::deliver(
            conn,
            &cfg,
            transport.as_mut(),
            ctx.now,
            Some(&journal),
            fence,
        )?;
        if d.sent == 0 && (d.retry > 0 || d.dead > 0) {
            return Err(format!(
                "{} to retry, {} dead: {}",
                d.retry,
                d.dead,
                d.last_error.unwrap_or_default()
            )
            .into());
        }
        Ok(d.sent)
    }

    /// The events alerts or digests may still need, read from the task's
    /// own marks in `bo_event` (so whether email is on or off, set up or
    /// not, does not matter; events waiting for it are kept):
    ///
    /// * **alerts**: events not yet `alerted` whose time is within
    ///   `FRESH_FOR` (a day) of now. An older one is never alerted by
    ///   anyone (turning email on after a month must not mail a month of
    ///   alerts, see `compose_alerts`), so it is not waited for; and since
    ///   retention is at least a day, an event still fresh is never old
    ///   enough to go anyway.
    /// * **digests**: where any digest subscriber exists (verified or not,
    ///   not unsubscribed: one may be verified before the next digest),
    ///   every event not yet `digested`, however old — with email off, the
    ///   next digest covers them all, so they are kept until it is sent.
    ///
    /// The answer is just below the lowest such event (the newest event
    /// if there is none).
    fn events_done(&self, db: Db<'_>) -> Result<Option<i64>, TaskError> {
        let Some(conn) = db.sqlite() else {
            return super::pg::events_done(db);
        };
        if !conn.table_exists(None, "bo_event")? {
            return Ok(Some(0));
        }
        let newest = backoffice::events::newest(conn)?;
        let now = backoffice::clock::now();
        // `mtime` bounds the scan to a day of events (its index).
        let unalerted: Option<i64> = conn.query_row(
            "SELECT min(eventid) FROM bo_event WHERE mtime >= ?1 AND alerted = 0",
            [now.saturating_sub(FRESH_FOR)],
            |r| r.get(0),
        )?;
        let digest_subscribers = conn.table_exists(None, "bo_subscriber")?
            && conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM bo_subscriber WHERE digest AND NOT donotcall)",
                [],
                |r| r.get::<_, bool>(0),
            )?;
        let undigested: Option<i64> = if digest_subscribers {
            // `+eventid`: read the ids from the partial index of undigested
            // events (a day of them when digests go out), rather than walk
            // the whole table in id order up to the first undigested one.
            conn.query_row(
                "SELECT min(+eventid) FROM bo_event WHERE digested = 0",
                [],
                |r| r.get(0),
            )?
        } else {
            None
        };
        Ok(Some(match (unalerted, undigested) {
            (None, None) => newest,
            (a, d) => a
                .into_iter()
                .chain(d)
                .min()
                .unwrap_or(newest)
                .saturating_sub(1),
        }))
    }

    fn status(&self, db: Db<'_>, now: i64) -> TaskStatus {
        let Some(conn) = db.sqlite() else {
            return super::pg::status(db, now);
        };
        let mut st = TaskStatus::default();
        match EmailConfig::load(conn) {
            Ok(c) if c.method == Method::Off => st
                .info
                .push("email-send-method is off: nothing is sent".into()),
            Ok(_) => {}
            Err(p) => st.problems.extend(p),
        }
        if !has_tables(conn).unwrap_or(false) {
            return st;
        }
        if let Ok((queued, sent, dead)) = outbox::counts(conn) {
            st.gauges.extend([
                Gauge::new("outbox", "queued", queued),
                Gauge::new("outbox", "sent", sent),
                Gauge::new("outbox", "dead", dead),
            ]);
            let next = match outbox::next_due(conn) {
                Ok(Some(t)) if t > now => {
                    format!(", next attempt {}", backoffice::clock::relative(t, now))
                }
                _ => String::new(),
            };
            st.info.push(format!(
                "outbox: {queued} queued{next}, {sent} sent, {dead} dead"
            ));
            if dead > 0 {
                st.problems.push(format!(
                    "{dead} dead message(s): see `backoffice outbox list --dead`"
                ));
                if let Ok(rows) = outbox::list(conn, Some("dead"), 3) {
                    for r in rows {
                        st.problems.push(format!(
                            "  dead #{} to {}: {}",
                            r.msgid,
                            r.address,
                            r.last_error.unwrap_or_default()
                        ));
                    }
                }
            }
            if let Ok(Some(e)) = outbox::last_error(conn) {
                st.problems.push(format!("last delivery failure: {e}"));
            }
        }
        st
    }
}

fn has_tables(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name IN ('bo_event', 'bo_subscriber', 'bo_outbox')",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n == 3)
}

/// Verified, subscribed subscribers of one mode: (id, address, kinds, code).
fn active_subscribers(
    conn: &Connection,
    digest: bool,
) -> rusqlite::Result<Vec<(i64, String, String, String)>> {
    let mut s = conn.prepare_cached(
        "SELECT subscriberid, address, kinds, code FROM bo_subscriber
         WHERE verified AND NOT donotcall AND digest = ?1 ORDER BY subscriberid",
    )?;
    s.query_map([digest], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?
    .collect()
}

/// Refuses the write (the caller's transaction then rolls back on drop)
/// when `fence` is a term the lease no longer carries.
pub(crate) fn check_fence(conn: &Connection, fence: Option<u64>) -> Result<(), DbError> {
    match fence {
        Some(term) => Ok(backoffice::writes::fenced(conn, term)?),
        None => Ok(()),
    }
}

/// Turns up to one batch of new events into queued alerts, in one
/// transaction that also marks them handled (fenced on `fence`). Returns how many events.
fn compose_alerts(
    conn: &Connection,
    cfg: &EmailConfig,
    project: &str,
    now: i64,
    fence: Option<u64>,
) -> Result<usize, DbError> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let events: Vec<EventText> = {
        let mut s = tx.prepare_cached(
            "SELECT eventid, kind, title, body, url, author, mtime FROM bo_event
             WHERE alerted = 0 ORDER BY eventid LIMIT ?1",
        )?;
        s.query_map([EVENT_BATCH], super::stored_event)?
            .collect::<rusqlite::Result<_>>()?
    };
    let Some(last) = events.last().map(|e| e.eventid) else {
        return Ok(0);
    };
    let fresh: Vec<&EventText> = events
        .iter()
        .filter(|e| e.time >= now - FRESH_FOR)
        .collect();
    let subscribers = active_subscribers(&tx, false)?;
    for (id, address, kinds, code) in &subscribers {
        let wanted: Vec<EventText> = fresh
            .iter()
            .filter(|e| super::subscribers::wants(kinds, &e.kind))
            .map(|e| (*e).clone())
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let unsubscribe = cfg.unsubscribe_url(code);
        let groups: Vec<Vec<EventText>> = if cfg.one_per_event {
            wanted.into_iter().map(|e| vec![e]).collect()
        } else {
            vec![wanted]
        };
        for g in groups {
            let c = compose::alert(project, &g, unsubscribe.as_deref());
            outbox::queue(
                &tx,
                &outbox::New {
                    subscriberid: Some(*id),
                    address,
                    kind: "alert",
                    subject: &c.subject,
                    body: &c.body,
                    code: Some(code),
                },
                now,
            )?;
        }
    }
    tx.execute(
        "UPDATE bo_event SET alerted = 1 WHERE alerted = 0 AND eventid <= ?1",
        params![last],
    )?;
    check_fence(&tx, fence)?;
    tx.commit()?;
    Ok(events.len())
}

/// Queues the digests if the digest time has passed since the last one:
/// one message per digest subscriber listing the events (of the kinds they
/// want) not yet in any digest; none for a subscriber with nothing to read.
/// An idle server's first run after several days sends one digest covering
/// them all. Returns the number of digests queued.
fn compose_digests(
    conn: &Connection,
    cfg: &EmailConfig,
    project: &str,
    now: i64,
    fence: Option<u64>,
) -> Result<usize, DbError> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let last: Option<i64> =
        backoffice::repo::config_get(&tx, LAST_DIGEST)?.and_then(|v| v.trim().parse().ok());
    let (from, to) = match cfg.digest_time.digest_due(last, now) {
        DigestDue::NotUntil(_) => return Ok(0),
        DigestDue::ClockBehind { reset_to } => {
            tracing::warn!(
                ?last,
                reset_to,
                "the clock went back; digests resume at the next digest time"
            );
            backoffice::repo::config_set(&tx, LAST_DIGEST, &reset_to.to_string())?;
            check_fence(&tx, fence)?;
            tx.commit()?;
            return Ok(0);
        }
        DigestDue::Due {
            window_start,
            window_end,
        } => (window_start, window_end),
    };
    // Events not yet in any digest and older than the window's end (so a
    // clock step loses nothing). A fresh repository starts with the last
    // day only, not all of history.
    let since = if last.is_none() { from } else { i64::MIN };
    let events: Vec<EventText> = {
        let mut s = tx.prepare_cached(
            "SELECT eventid, kind, title, body, url, author, mtime FROM bo_event
             WHERE digested = 0 AND mtime < ?1 AND mtime >= ?2 ORDER BY mtime, eventid",
        )?;
        s.query_map(params![to, since], super::stored_event)?
            .collect::<rusqlite::Result<_>>()?
    };
    let mut queued = 0;
    if !events.is_empty() {
        let subscribers = active_subscribers(&tx, true)?;
        for (id, address, kinds, code) in &subscribers {
            let wanted: Vec<EventText> = events
                .iter()
                .filter(|e| super::subscribers::wants(kinds, &e.kind))
                .take(DIGEST_MAX_EVENTS)
                .cloned()
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let unsubscribe = cfg.unsubscribe_url(code);
            let c = compose::digest(project, &wanted, from, to, unsubscribe.as_deref());
            outbox::queue(
                &tx,
                &outbox::New {
                    subscriberid: Some(*id),
                    address,
                    kind: "digest",
                    subject: &c.subject,
                    body: &c.body,
                    code: Some(code),
                },
                now,
            )?;
            queued += 1;
        }
    }
    tx.execute(
        "UPDATE bo_event SET digested = 1 WHERE digested = 0 AND mtime < ?1",
        [to],
    )?;
    backoffice::repo::config_set(&tx, LAST_DIGEST, &to.to_string())?;
    check_fence(&tx, fence)?;
    tx.commit()?;
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::subscribers::{self, New};
    use backoffice::events::{Event, publish};

    const HOUR: i64 = 3600;
    /// 2026-11-21 00:00:00 UTC.
    const DAY0: i64 = 1_795_219_200;

    fn setup() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        super::super::install(&conn).unwrap();
        for (k, v) in [
            ("email-send-method", "stdout"),
            ("email-self", "bo@example.org"),
            ("email-url", "https://example.org"),
            ("email-subname", "[t]"),
            ("email-digest-time", "07:00 Europe/Paris"),
        ] {
            backoffice::repo::config_set(&conn, k, v).unwrap();
        }
        for (addr, digest, verified) in [
            ("daily@example.org", true, true),
            ("unverified@example.org", true, false),
            ("instant@example.org", false, true),
        ] {
            subscribers::add(
                &conn,
                &New {
                    address: addr.into(),
                    kinds: "*".into(),
                    digest,
                    verified,
                    ..New::default()
                },
            )
            .unwrap();
        }
        conn
    }

    fn event(conn: &Connection, title: &str, time: i64) {
        publish(
            conn,
            &Event {
                kind: "wiki".into(),
                title: title.into(),
                time: Some(time),
                ..Event::default()
            },
        )
        .unwrap();
    }

    fn digests(conn: &Connection) -> Vec<(String, String)> {
        let mut s = conn
            .prepare("SELECT address, body FROM bo_outbox WHERE kind = 'digest' ORDER BY msgid")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn cfg(conn: &Connection) -> EmailConfig {
        EmailConfig::load(conn).unwrap()
    }

    #[test]
    fn fresh_repository_digests_the_last_day_only() {
        let conn = setup();
        event(&conn, "Ancient", DAY0 - 30 * 24 * HOUR);
        event(&conn, "Yesterday evening", DAY0 - 3 * HOUR);
        // 07:00 Paris is 06:00 UTC in November; at 09:00 UTC it has passed.
        let n = compose_digests(&conn, &cfg(&conn), "p", DAY0 + 9 * HOUR, None).unwrap();
        assert_eq!(n, 1);
        let d = digests(&conn);
        assert_eq!(d[0].0, "daily@example.org");
        assert!(
            d[0].1.contains("Yesterday evening") && !d[0].1.contains("Ancient"),
            "{}",
            d[0].1
        );
        assert!(
            d[0].1
                .contains("from 2026-11-20 06:00 to 2026-11-21 06:00 UTC"),
            "{}",
            d[0].1
        );
        // Later the same day: nothing more.
        assert_eq!(
            compose_digests(&conn, &cfg(&conn), "p", DAY0 + 20 * HOUR, None).unwrap(),
            0
        );
    }

    #[test]
    fn three_idle_days_make_one_digest_and_empty_days_none() {
        let conn = setup();
        compose_digests(&conn, &cfg(&conn), "p", DAY0 + 9 * HOUR, None).unwrap(); // sets the boundary
        for d in 0..3 {
            event(&conn, &format!("Day {d}"), DAY0 + (d * 24 + 12) * HOUR);
        }
        // Three days later, one run: one digest with all three.
        let n = compose_digests(&conn, &cfg(&conn), "p", DAY0 + (3 * 24 + 9) * HOUR, None).unwrap();
        assert_eq!(n, 1);
        let d = digests(&conn);
        assert_eq!(d.len(), 1);
        for day in 0..3 {
            assert!(d[0].1.contains(&format!("Day {day}")), "{}", d[0].1);
        }
        // The next day had no events: no digest.
        assert_eq!(
            compose_digests(&conn, &cfg(&conn), "p", DAY0 + (4 * 24 + 9) * HOUR, None).unwrap(),
            0
        );
        assert_eq!(digests(&conn).len(), 1);
    }

    /// Events more than a day old when first seen get no immediate alert
    /// (turning email on after a month must not mail a month of alerts);
    /// they stay for the digest.
    #[test]
    fn events_older_than_a_day_when_first_seen_get_no_alert() {
        let conn = setup();
        let now = DAY0 + 12 * HOUR;
        event(&conn, "Last month", now - 30 * 24 * HOUR);
        event(&conn, "Just over a day ago", now - FRESH_FOR - 1);
        event(&conn, "Just under a day ago", now - FRESH_FOR + 60);
        assert_eq!(
            compose_alerts(&conn, &cfg(&conn), "p", now, None).unwrap(),
            3
        );
        let alerts: Vec<(String, String)> = conn
            .prepare("SELECT address, body FROM bo_outbox WHERE kind = 'alert'")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].0, "instant@example.org");
        assert!(
            alerts[0].1.contains("Just under a day ago"),
            "{}",
            alerts[0].1
        );
        assert!(
            !alerts[0].1.contains("Last month") && !alerts[0].1.contains("Just over"),
            "{}",
            alerts[0].1
        );
        // All three are handled for alerts, and still waiting for a digest.
        let undigested: i64 = conn
            .query_row(
                "SELECT count(*) FROM bo_event WHERE alerted = 1 AND digested = 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(undigested, 3);
        // Only old events: no alert at all.
        event(&conn, "Old again", now - 2 * 24 * HOUR);
        compose_alerts(&conn, &cfg(&conn), "p", now, None).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM bo_outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    /// Retention keeps what alerts and digests may still need: events not
    /// yet digested while a digest subscriber exists (email off or not),
    /// and events within a day not yet alerted; nothing else.
    #[test]
    fn events_done_keeps_what_alerts_and_digests_still_need() {
        let conn = setup();
        assert_eq!(Notify.events_done((&conn).into()).unwrap(), Some(0));
        let now = backoffice::clock::now();
        event(&conn, "three days ago", now - 72 * HOUR); // 1
        event(&conn, "two days ago", now - 48 * HOUR); // 2
        event(&conn, "an hour ago", now - HOUR); // 3
        // Email off: nothing is composed, everything waits for the digest.
        backoffice::repo::config_set(&conn, "email-send-method", "off").unwrap();
        let ctx = Context {
            db: backoffice::Db::Sqlite(&conn),
            repo: std::path::Path::new("r.db"),
            now,
            debug: false,
            term: 0,
        };
        assert_eq!(Notify.run(&ctx).unwrap(), 0);
        assert_eq!(Notify.events_done((&conn).into()).unwrap(), Some(0));
        // The digest went out (compose_digests marks what it covered; here
        // the two old events): the fresh one still waits for its alert.
        conn.execute("UPDATE bo_event SET digested = 1 WHERE eventid <= 2", [])
            .unwrap();
        assert_eq!(Notify.events_done((&conn).into()).unwrap(), Some(2));
        // Alerts composed (email on): only the undigested one is held.
        backoffice::repo::config_set(&conn, "email-send-method", "stdout").unwrap();
        assert_eq!(
            compose_alerts(&conn, &cfg(&conn), "p", now, None).unwrap(),
            3
        );
        assert_eq!(Notify.events_done((&conn).into()).unwrap(), Some(2));
        conn.execute("UPDATE bo_event SET digested = 1", [])
            .unwrap();
        assert_eq!(Notify.events_done((&conn).into()).unwrap(), Some(3));
        // An old event, never alerted (it never will be: too old) and not
        // digested: held only while a digest subscriber exists.
        event(&conn, "last week", now - 7 * 24 * HOUR); // 4
        assert_eq!(Notify.events_done((&conn).into()).unwrap(), Some(3));
        conn.execute("UPDATE bo_subscriber SET donotcall = 1 WHERE digest", [])
            .unwrap();
        assert_eq!(Notify.events_done((&conn).into()).unwrap(), Some(4));
        // A fresh event not yet alerted is held, subscribers or not.
        event(&conn, "just now", now); // 5
        event(&conn, "old, published after it", now - 7 * 24 * HOUR); // 6
        assert_eq!(Notify.events_done((&conn).into()).unwrap(), Some(4));
    }

    #[test]
    fn status_gauges_count_the_outbox() {
        // Without the tables: no gauges (nothing to count, and a host that
        // never used email should not export zeros for it).
        let bare = Connection::open_in_memory().unwrap();
        assert!(Notify.status((&bare).into(), 0).gauges.is_empty());

        let conn = setup();
        let m = outbox::New {
            subscriberid: None,
            address: "a@example.org",
            kind: "alert",
            subject: "s",
            body: "b",
            code: None,
        };
        for _ in 0..6 {
            outbox::queue(&conn, &m, DAY0).unwrap();
        }
        // Distinct numbers, so a mixed-up state shows.
        conn.execute_batch(
            "UPDATE bo_outbox SET state = 'dead' WHERE msgid = 1;
             UPDATE bo_outbox SET state = 'sent' WHERE msgid IN (2, 3);",
        )
        .unwrap();
        let g = Notify.status((&conn).into(), DAY0).gauges;
        assert_eq!(
            g,
            vec![
                Gauge::new("outbox", "queued", 3),
                Gauge::new("outbox", "sent", 2),
                Gauge::new("outbox", "dead", 1),
            ]
        );
    }

    #[test]
    fn due_says_when_the_next_digest_is() {
        let conn = setup();
        let t = DAY0 + 9 * HOUR;
        // Fresh: due now (to set the first boundary).
        assert_eq!(Notify.due((&conn).into(), t).unwrap(), Due::Now);
        compose_digests(&conn, &cfg(&conn), "p", t, None).unwrap();
        // Then: tomorrow 07:00 Paris = 06:00 UTC.
        assert_eq!(
            Notify.due((&conn).into(), t).unwrap(),
            Due::At(DAY0 + 30 * HOUR)
        );
        // A new event makes alerts due now.
        event(&conn, "New", t);
        assert_eq!(Notify.due((&conn).into(), t).unwrap(), Due::Now);
        // With email off, nothing is ever due.
        backoffice::repo::config_set(&conn, "email-send-method", "off").unwrap();
        assert_eq!(Notify.due((&conn).into(), t).unwrap(), Due::Never);
    }
}
