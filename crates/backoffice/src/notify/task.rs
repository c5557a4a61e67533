//! The `Notify` task: compose alerts (and digests), then deliver.

use rusqlite::{Connection, TransactionBehavior, params};

use super::compose::{self, EventText};
use super::config::{EmailConfig, Method};
use super::outbox;
use crate::task::{Context, Due, Task, TaskError, TaskStatus};

/// Events older than this when first seen get no immediate alert (they
/// still appear in digests): turning email on after a month must not mail
/// a month of alerts.
const FRESH_FOR: i64 = 24 * 3600;
/// Events composed per transaction.
const EVENT_BATCH: i64 = 1000;

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

    fn due(&self, conn: &Connection, now: i64) -> Result<Due, TaskError> {
        let row = conn
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM bo_event WHERE alerted = 0),
                        (SELECT min(next_attempt) FROM bo_outbox WHERE state = 'queued'),
                        (SELECT value FROM config WHERE name = 'email-send-method')",
            )
            .and_then(|mut s| {
                s.query_row([], |r| {
                    Ok((
                        r.get::<_, bool>(0)?,
                        r.get::<_, Option<i64>>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                })
            });
        let (new_events, next_send, method) = match row {
            Ok(r) => r,
            // No notification tables: nothing was ever published.
            Err(e) if crate::repo::is_no_such_table(&e) => return Ok(Due::Never),
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
        Ok(match next_send {
            Some(t) if t <= now => Due::Now,
            Some(t) => Due::At(t),
            None => Due::Never,
        })
    }

    fn run(&self, ctx: &Context<'_>) -> Result<u64, TaskError> {
        let conn = ctx.conn;
        if !has_tables(conn)? {
            return Ok(0);
        }
        let cfg = match EmailConfig::load(conn) {
            Ok(c) if c.method == Method::Off => return Ok(0),
            Ok(c) => c,
            Err(problems) => return Err(problems.join("; ").into()),
        };
        let project = crate::repo::project_name(conn, ctx.repo);
        while compose_alerts(conn, &cfg, &project, ctx.now)? == EVENT_BATCH as usize {}
        let mut transport = cfg.transport()?;
        let d = outbox::deliver(conn, &cfg, transport.as_mut(), ctx.now)?;
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

    fn status(&self, conn: &Connection, now: i64) -> TaskStatus {
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
            let next = match outbox::next_due(conn) {
                Ok(Some(t)) if t > now => {
                    format!(", next attempt {}", crate::clock::relative(t, now))
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
            if let Ok(rows) = outbox::list(conn, Some("queued"), 1) {
                if let Some(e) = rows.first().and_then(|r| r.last_error.clone()) {
                    st.problems.push(format!("last delivery failure: {e}"));
                }
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

/// Turns up to one batch of new events into queued alerts, in one
/// transaction that also marks them handled. Returns how many events.
fn compose_alerts(
    conn: &Connection,
    cfg: &EmailConfig,
    project: &str,
    now: i64,
) -> rusqlite::Result<usize> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let events: Vec<EventText> = {
        let mut s = tx.prepare_cached(
            "SELECT eventid, kind, title, body, url, author, mtime FROM bo_event
             WHERE alerted = 0 ORDER BY eventid LIMIT ?1",
        )?;
        s.query_map([EVENT_BATCH], |r| {
            Ok(EventText {
                id: r.get(0)?,
                kind: r.get(1)?,
                title: r.get(2)?,
                body: r.get(3)?,
                url: r.get(4)?,
                author: r.get(5)?,
                time: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?
    };
    let Some(last) = events.last().map(|e| e.id) else {
        return Ok(0);
    };
    let fresh: Vec<&EventText> = events
        .iter()
        .filter(|e| e.time >= now - FRESH_FOR)
        .collect();
    let subscribers: Vec<(i64, String, String, String)> = {
        let mut s = tx.prepare_cached(
            "SELECT subscriberid, address, kinds, code FROM bo_subscriber
             WHERE verified AND NOT donotcall AND NOT digest ORDER BY subscriberid",
        )?;
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
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
    tx.commit()?;
    Ok(events.len())
}
