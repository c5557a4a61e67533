//! The HTML pages: the index of repositories, a repository's status page,
//! and the unsubscribe target. No JavaScript, no outside resources, one
//! inline style sheet; every value from a repository or a request goes
//! through [`esc`]. The page shell, escaping and error pages are in
//! `respond.rs`, shared with every other route.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use backoffice::clock;
use backoffice::events::StoredEvent;
use backoffice::status::{Cluster, SlotView, Status};
use backoffice_tasks::notify::subscribers::Subscriber;

use super::app::App;
use super::respond::{
    Failure, blocking, esc, html_type, on_repo, on_repo_write, page, subscriber_failure, web_status,
};

/// "1 run", "2 runs".
fn count(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// `GET /`.
pub async fn get_index(State(app): State<Arc<App>>) -> Response {
    blocking(app, |app| Ok(index(app))).await
}

/// `GET /r/NAME`.
pub async fn get_status(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    on_repo(app, name.clone(), true, move |app, repo| {
        let st = web_status(app, &name, repo)?;
        let events = repo
            .recent_events(10)
            .map_err(|e| Failure::db("reading recent events", e))?;
        let html = status(&name, &st, &events, app.workers_started(&name));
        Ok((html_type(), html).into_response())
    })
    .await
}

/// `GET /r/NAME/unsubscribe/CODE`.
pub async fn get_unsubscribe(
    State(app): State<Arc<App>>,
    Path((name, code)): Path<(String, String)>,
) -> Response {
    // A GET changes nothing: mail scanners fetch links. It shows a button
    // that POSTs, which is also what RFC 8058 one-click clients send.
    on_repo(app, name.clone(), true, move |_, repo| {
        match repo.subscriber_by_code(&code) {
            Ok(Some(s)) => Ok((html_type(), unsubscribe_form(&name, &s)).into_response()),
            Ok(None) => Err(bad_code()),
            Err(e) => Err(subscriber_failure(e)),
        }
    })
    .await
}

/// `POST /r/NAME/unsubscribe/CODE` (also RFC 8058's one-click POST).
pub async fn post_unsubscribe(
    State(app): State<Arc<App>>,
    Path((name, code)): Path<(String, String)>,
) -> Response {
    on_repo_write(app, name.clone(), true, move |_, repo| {
        match repo.unsubscribe_by_code(&code) {
            Ok(Some(addr)) => Ok((html_type(), unsubscribed(&name, &addr)).into_response()),
            Ok(None) => Err(bad_code()),
            Err(e) => Err(subscriber_failure(e)),
        }
    })
    .await
}

fn bad_code() -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        "this unsubscribe link is not valid: it may have been mistyped, or the subscription removed",
    )
    .html()
}

/// `GET /`: every repository, its last run and anything failing.
fn index(app: &App) -> Response {
    let list = app.site.list();
    let mut rows = String::new();
    for name in &list {
        let cell = match app.site.with_repo(name, |r| web_status(app, name, r)) {
            Some(Ok(Ok(st))) => {
                let last = match &st.last_run {
                    Some(r) => format!("{} ({} items)", st.last_run_ago, r.items()),
                    None => st.last_run_ago.clone(),
                };
                let problems = if st.problems.is_empty() {
                    "<span class=\"ok\">none</span>".to_owned()
                } else {
                    format!(
                        "<span class=\"bad\">{}{}</span>",
                        esc(&st.problems[0]),
                        if st.problems.len() > 1 {
                            format!(" (and {} more)", st.problems.len() - 1)
                        } else {
                            String::new()
                        }
                    )
                };
                format!(
                    "<td>{}</td><td>{}</td><td>{problems}</td>",
                    esc(&last),
                    esc(&st.lease_words())
                )
            }
            // Logged by the status reader; no detail on the page.
            _ => "<td colspan=\"3\" class=\"bad\">cannot be read (see the server log)</td>"
                .to_owned(),
        };
        let _ = writeln!(
            rows,
            "<tr><td><a href=\"/r/{0}\">{0}</a></td>{cell}</tr>",
            esc(name)
        );
    }
    let body = if list.is_empty() {
        "<h1>backoffice</h1>\n<p>No repositories are served.</p>".to_owned()
    } else {
        format!(
            "<h1>backoffice</h1>\n<table>\n<tr><th>Repository</th><th>Last run</th><th>Lease</th><th>Failing</th></tr>\n{rows}</table>\n\
<p class=\"dim\"><a href=\"/metrics\">metrics</a></p>"
        )
    };
    (html_type(), page("backoffice", Some(30), &body)).into_response()
}

/// `GET /r/NAME`: one repository at a glance.
fn status(name: &str, st: &Status, events: &[StoredEvent], started_here: u64) -> String {
    let mut b = String::new();
    let n = esc(name);
    let _ = writeln!(
        b,
        "<h1>{n}</h1>\n<p class=\"dim\">backoffice status, {} UTC &middot; <a href=\"/r/{n}/status.json\">JSON</a> &middot; <a href=\"/\">all repositories</a></p>",
        esc(&clock::format_utc(st.now))
    );

    // The facts a person wants first.
    let worker = if st.current.pid > 0 && st.current.alive {
        format!(
            "<span class=\"ok\">running</span> &mdash; {}",
            esc(&st.lease_words())
        )
    } else {
        format!("idle &mdash; lease {}", esc(&st.lease_words()))
    };
    let last = match &st.last_run {
        Some(r) => {
            let failed = r.failed_tasks();
            format!(
                "{} ({} UTC, worker {}): {} item{} in {} ms{}",
                esc(&st.last_run_ago),
                esc(&clock::format_utc(r.started)),
                r.pid,
                r.items(),
                if r.items() == 1 { "" } else { "s" },
                r.elapsed_us / 1000,
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", <span class=\"bad\">failed: {}</span>",
                        esc(&failed.join(", "))
                    )
                }
            )
        }
        None => esc(&st.last_run_ago),
    };
    let _ = writeln!(
        b,
        "<table class=\"facts\">\n<tr><th>Worker</th><td>{worker}</td></tr>\n\
<tr><th>On deck</th><td>{}</td></tr>\n<tr><th>Last run</th><td>{last}</td></tr>\n\
<tr><th>Due next</th><td>{}</td></tr>\n<tr><th>Due summary</th><td>{}</td></tr>\n<tr><th>Lease term</th><td>{} (takeovers so far)</td></tr>\n\
<tr><th>Event log</th><td>{}</td></tr>\n<tr><th>Totals</th><td>{}, {}, {}{}</td></tr>\n\
<tr><th>This server</th><td>started {started_here} worker{}</td></tr>\n</table>",
        esc(&st.on_deck_words()),
        esc(&st.next_due_words()),
        esc(&st.due_summary),
        st.term,
        esc(&st.event_log_words()),
        count(st.totals.runs, "run"),
        count(st.totals.items, "item"),
        count(st.totals.failures, "task failure"),
        if st.totals.since > 0 {
            format!(" since {} UTC", esc(&clock::format_utc(st.totals.since)))
        } else {
            String::new()
        },
        if started_here == 1 { "" } else { "s" },
    );

    if let Some(c) = &st.cluster {
        cluster(&mut b, c);
    }

    if st.problems.is_empty() {
        b.push_str("<h2>Problems</h2>\n<p class=\"ok\">None.</p>\n");
    } else {
        b.push_str("<h2>Problems</h2>\n<ul class=\"problems\">\n");
        for p in &st.problems {
            let _ = writeln!(b, "<li>{}</li>", esc(p));
        }
        b.push_str("</ul>\n");
    }

    b.push_str("<h2>Tasks</h2>\n<table>\n<tr><th>Task</th><th>Due</th></tr>\n");
    for t in &st.tasks {
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(&t.task),
            esc(&st.task_due_words(t))
        );
    }
    b.push_str("</table>\n");

    if !st.gauges.is_empty() {
        b.push_str("<h2>Queues</h2>\n<table>\n<tr><th>Task</th><th>Queue</th><th>State</th><th>Count</th></tr>\n");
        for g in &st.gauges {
            let _ = writeln!(
                b,
                "<tr><td>{}</td><td>{}</td><td{}>{}</td><td>{}</td></tr>",
                esc(&g.task),
                esc(&g.queue),
                if g.value > 0 && matches!(g.state.as_str(), "dead" | "failing" | "retrying") {
                    " class=\"bad\""
                } else {
                    ""
                },
                esc(&g.state),
                g.value
            );
        }
        b.push_str("</table>\n");
    }
    if !st.info.is_empty() {
        b.push_str("<ul>\n");
        for i in &st.info {
            let _ = writeln!(b, "<li>{}</li>", esc(i));
        }
        b.push_str("</ul>\n");
    }

    b.push_str("<h2>Recent events</h2>\n");
    if events.is_empty() {
        b.push_str("<p class=\"dim\">None published yet.</p>\n");
    } else {
        b.push_str(
            "<table>\n<tr><th>#</th><th>Kind</th><th>Title</th><th>By</th><th>When</th></tr>\n",
        );
        for e in events {
            let _ = writeln!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                // On PostgreSQL, not yet given its place by a worker.
                if e.eventid > 0 {
                    e.eventid.to_string()
                } else {
                    "&ndash;".to_owned()
                },
                esc(&e.kind),
                esc(&e.title),
                esc(e.author.as_deref().unwrap_or("")),
                esc(&clock::relative(e.time, st.now))
            );
        }
        b.push_str("</table>\n");
    }

    b.push_str("<h2>Run log</h2>\n");
    if st.log_tail.is_empty() {
        b.push_str("<p class=\"dim\">No log lines (set <code>backoffice-logfile</code> to keep a run log).</p>\n");
    } else {
        b.push_str("<pre>");
        for l in &st.log_tail {
            let _ = writeln!(b, "{}", esc(l));
        }
        b.push_str("</pre>\n");
    }

    b.push_str("<h2>Settings</h2>\n<table>\n");
    for s in &st.settings {
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td>{}</td><td class=\"dim\">{}</td></tr>",
            esc(&s.name),
            esc(&s.value),
            if s.default { "default" } else { "" }
        );
    }
    b.push_str("</table>\n");
    page(&format!("{name} — backoffice"), Some(5), &b)
}

/// The cluster of a PostgreSQL repository: the term, each slot's host, pid
/// and heartbeat, the hand-overs, and this host's clock against the
/// database's (on which every time in the lease is).
fn cluster(b: &mut String, c: &Cluster) {
    let now = c.db_now;
    let _ = writeln!(
        b,
        "<h2>Cluster</h2>\n<table class=\"facts\">\n\
<tr><th>Store</th><td>{} &middot; {}</td></tr>\n\
<tr><th>Term</th><td>{}</td></tr>\n\
<tr><th>Hand-overs</th><td>{} (takeovers after a holder's heartbeat ran out)</td></tr>\n\
<tr><th>Holder</th><td{}>{}</td></tr>\n\
<tr><th>On deck</th><td>{}</td></tr>\n\
<tr><th>Heartbeat</th><td>every {} s; lease time {} s{}</td></tr>\n\
<tr><th>Clock</th><td{}>{} (database: {} UTC)</td></tr>\n</table>",
        esc(c.store),
        esc(&c.repository),
        c.term,
        c.handovers,
        if c.current.as_ref().is_some_and(|v| !v.alive) {
            " class=\"bad\""
        } else {
            ""
        },
        esc(&SlotView::words(c.current.as_ref(), now)),
        esc(&SlotView::words(c.on_deck.as_ref(), now)),
        c.heartbeat,
        c.lease_time,
        if c.disabled {
            ", <span class=\"bad\">disabled</span> (backoffice-disable)"
        } else {
            ""
        },
        // More than a few seconds apart: worth a look (leases are on the
        // database's clock, so it is harmless to them, but not to logs).
        if c.clock_gap.unsigned_abs() > 5 {
            " class=\"bad\""
        } else {
            ""
        },
        esc(&c.clock_words()),
        esc(&clock::format_utc(now)),
    );
}

/// `GET /r/NAME/unsubscribe/CODE`: a button, since a GET changes nothing.
fn unsubscribe_form(name: &str, s: &Subscriber) -> String {
    let body = if s.donotcall {
        format!(
            "<h1>Unsubscribed</h1>\n<p>{} gets no email from {}.</p>",
            esc(&s.address),
            esc(name)
        )
    } else {
        format!(
            "<h1>Unsubscribe</h1>\n<p>Stop all email from {} to {}{}?</p>\n\
<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
<button type=\"submit\">Unsubscribe</button></form>",
            esc(name),
            s.name
                .as_deref()
                .map(|n| format!("{} ", esc(n)))
                .unwrap_or_default(),
            esc(&format!("<{}>", s.address))
        )
    };
    page("Unsubscribe", None, &body)
}

/// After `POST /r/NAME/unsubscribe/CODE`.
fn unsubscribed(name: &str, address: &str) -> String {
    page(
        "Unsubscribed",
        None,
        &format!(
            "<h1>Unsubscribed</h1>\n<p>{} will get no more email from {}.</p>",
            esc(address),
            esc(name)
        ),
    )
}
