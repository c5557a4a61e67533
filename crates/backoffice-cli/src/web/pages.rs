//! The HTML pages: the index of repositories, a repository's status page,
//! and the unsubscribe target. No JavaScript, no outside resources, one
//! inline style sheet; every value from a repository or a request goes
//! through [`esc`]. The page shell, escaping and error pages are in
//! `respond.rs`, shared with every other route.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use backoffice::clock;
use backoffice::events::StoredEvent;
use backoffice::status::{Cluster, SlotView, Status, TaskGauge};
use backoffice_tasks::notify::subscribers::Subscriber;
use backoffice_tasks::{hooks, webhooks};
use serde::Deserialize;

use super::app::{App, IndexRow};
use super::history;
use super::respond::{
    Failure, blocking, esc, html_type, login_page, on_repo, on_repo_write, page,
    subscriber_failure, web_status,
};
use super::session::{self, Access};

/// "1 run", "2 runs".
fn count(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// `GET /?sort=…&all=1`.
#[derive(Debug, Default, Deserialize)]
pub struct IndexQuery {
    sort: Option<String>,
    #[serde(default)]
    all: Option<String>,
}

/// `GET /`.
pub async fn get_index(State(app): State<Arc<App>>, Query(q): Query<IndexQuery>) -> Response {
    let shared = Arc::clone(&app);
    blocking(app, move |_| Ok(index(&shared, &q))).await
}

/// `GET /r/NAME?all=1` (`all`: the Queues table's zero rows too).
#[derive(Debug, Default, Deserialize)]
pub struct StatusQuery {
    all: Option<String>,
}

/// `GET /r/NAME`: the whole page with the token (session or bearer), the
/// redacted summary if `web-public-summary` is on, else the sign-in form.
pub async fn get_status(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<StatusQuery>,
    headers: HeaderMap,
) -> Response {
    on_repo(app, name.clone(), true, move |app, repo| {
        let acc = session::access(repo, &headers, clock::now())
            .map_err(|e| Failure::db("checking access", e))?;
        if acc == Access::None {
            return Ok((
                StatusCode::UNAUTHORIZED,
                html_type(),
                login_page(&name, None),
            )
                .into_response());
        }
        let st = web_status(app, &name, repo)?;
        let show_all = q.all.is_some();
        if acc == Access::Summary {
            return Ok((html_type(), summary(&name, &st, show_all)).into_response());
        }
        let events = repo
            .recent_events(10)
            .map_err(|e| Failure::db("reading recent events", e))?;
        let csrf = match &acc {
            Access::Full { csrf } => csrf.clone(),
            _ => None,
        };
        // The hooks and endpoints, for their buttons (a session only: a
        // bearer token's client has the JSON API).
        let targets = match &csrf {
            Some(_) => Targets {
                hooks: hooks::list(repo.db()).unwrap_or_default(),
                webhooks: webhooks::list(repo.db()).unwrap_or_default(),
            },
            None => Targets::default(),
        };
        let html = status(
            &name,
            &st,
            &events,
            app.workers_started(&name),
            csrf.as_deref(),
            &targets,
            show_all,
        );
        Ok((html_type(), html).into_response())
    })
    .await
}

/// The hooks and webhook endpoints a session's page offers buttons for.
#[derive(Default)]
struct Targets {
    hooks: Vec<(hooks::Hook, Option<hooks::State>)>,
    webhooks: Vec<webhooks::Webhook>,
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

/// One repository's row of the index, read from its status.
fn index_row(app: &App, name: &str) -> IndexRow {
    let read = app.site.with_repo(name, |r| {
        let public = session::public_summary(r).unwrap_or(false);
        web_status(app, name, r).map(|st| (public, st))
    });
    match read {
        Some(Ok(Ok((public, st)))) => {
            let mut sources = st.problem_sources.clone();
            sources.dedup();
            sources.sort();
            sources.dedup();
            IndexRow {
                name: name.to_owned(),
                readable: true,
                public,
                problems: st.problems.len(),
                sources,
                last_run_age: st.last_run_age,
                last_items: st.last_run.as_ref().map(|r| r.items()),
                running: st.current.pid > 0 && st.current.alive,
            }
        }
        _ => IndexRow {
            name: name.to_owned(),
            ..IndexRow::default()
        },
    }
}

/// How the index is sorted (`?sort=`): problems first (the default), by
/// name, or the longest since a run first.
fn sort_rows(rows: &mut [&IndexRow], by: &str) {
    // Unreadable first, then public rows with problems, most first; rows
    // whose counts are private last (their counts are not shown).
    let rank = |r: &IndexRow| -> (u8, std::cmp::Reverse<usize>) {
        match (r.readable, r.public) {
            (false, _) => (0, std::cmp::Reverse(0)),
            (true, true) if r.problems > 0 => (1, std::cmp::Reverse(r.problems)),
            (true, true) => (2, std::cmp::Reverse(0)),
            (true, false) => (3, std::cmp::Reverse(0)),
        }
    };
    match by {
        "name" => rows.sort_by(|a, b| a.name.cmp(&b.name)),
        "last-run" => rows.sort_by(|a, b| {
            let age = |r: &IndexRow| match (r.public, r.last_run_age) {
                (true, None) => (0, 0),
                (true, Some(a)) => (1, -a),
                (false, _) => (2, 0),
            };
            age(a).cmp(&age(b)).then_with(|| a.name.cmp(&b.name))
        }),
        _ => rows.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.name.cmp(&b.name))),
    }
}

/// Rows the index shows unless `?all=1`.
const INDEX_ROWS: usize = 1000;

/// `GET /`: every repository, problems first. Only counts and ages, and
/// only for repositories whose `web-public-summary` is on; the rows are
/// kept for a few seconds ([`App::index_rows`]).
fn index(app: &Arc<App>, q: &IndexQuery) -> Response {
    let (rows, age) = app.index_rows(|app| {
        app.site
            .list()
            .iter()
            .map(|name| index_row(app, name))
            .collect()
    });
    let by = match q.sort.as_deref() {
        Some("name") => "name",
        Some("last-run") => "last-run",
        _ => "problems",
    };
    let mut sorted: Vec<&IndexRow> = rows.iter().collect();
    sort_rows(&mut sorted, by);
    let limit = if q.all.is_some() {
        usize::MAX
    } else {
        INDEX_ROWS
    };
    let mut out = String::new();
    for r in sorted.iter().take(limit) {
        let n = esc(&r.name);
        let cells = if !r.readable {
            "<td colspan=\"3\" class=\"bad\">cannot be read (see the server log)</td>".to_owned()
        } else if !r.public {
            format!(
                "<td colspan=\"3\" class=\"dim\">private: <a href=\"/r/{n}/login\">sign in</a></td>"
            )
        } else {
            let last = match (r.last_run_age, r.last_items) {
                (Some(a), Some(i)) => format!("{} ({i} items)", clock::relative(0, a)),
                _ => "never".to_owned(),
            };
            let problems = if r.problems == 0 {
                "<span class=\"ok\">none</span>".to_owned()
            } else {
                format!(
                    "<span class=\"bad\">{} ({})</span>",
                    count(r.problems as u64, "problem"),
                    esc(&r.sources.join(", "))
                )
            };
            format!(
                "<td>{}</td><td>{}</td><td>{problems}</td>",
                esc(&last),
                if r.running { "running" } else { "idle" }
            )
        };
        let _ = writeln!(
            out,
            "<tr data-problems=\"{}\"><td><a href=\"/r/{n}\">{n}</a></td>{cells}</tr>",
            if r.public { r.problems } else { 0 }
        );
    }
    let body = if rows.is_empty() {
        "<h1>backoffice</h1>\n<p>No repositories are served.</p>".to_owned()
    } else {
        let link = |key: &str, label: &str| {
            if key == by {
                format!("<b>{label}</b>")
            } else {
                format!("<a href=\"/?sort={key}\">{label}</a>")
            }
        };
        let shown = if rows.len() > limit {
            format!(
                " &middot; showing {limit} of {} (<a href=\"/?sort={by}&amp;all=1\">all</a>)",
                rows.len()
            )
        } else {
            String::new()
        };
        format!(
            "<h1>backoffice</h1>\n<p class=\"dim\">{} &middot; sort: {} &middot; {} &middot; {}{shown} &middot; as of {} s ago</p>\n\
<table id=\"index\">\n<tr><th>Repository</th><th>Last run</th><th>Worker</th><th>Problems</th></tr>\n{out}</table>\n\
<p class=\"dim\"><a href=\"/metrics\">metrics</a></p>",
            count(rows.len() as u64, "repository").replace("repositorys", "repositories"),
            link("problems", "problems first"),
            link("name", "name"),
            link("last-run", "longest since a run"),
            age.as_secs(),
        )
    };
    (html_type(), page("backoffice", Some(30), &body)).into_response()
}

/// `GET /r/NAME`: one repository at a glance, with the token. `csrf`: the
/// session's CSRF token, for the action buttons (none for a bearer token).
fn status(
    name: &str,
    st: &Status,
    events: &[StoredEvent],
    started_here: u64,
    csrf: Option<&str>,
    targets: &Targets,
    show_all: bool,
) -> String {
    let mut b = String::new();
    let n = esc(name);
    let signout = match csrf {
        // A form may not sit inside a paragraph: after it.
        Some(c) => format!(
            "\n<form method=\"post\" action=\"/r/{n}/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">sign out</button></form>",
            esc(c)
        ),
        None => String::new(),
    };
    let _ = writeln!(
        b,
        "<h1>{n}</h1>\n<p class=\"dim\">backoffice status, {} UTC &middot; <a href=\"/r/{n}/status.json\">JSON</a> &middot; <a href=\"/\">all repositories</a></p>{signout}",
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

    // Right under the problems: what an operator can do about them.
    if let Some(c) = csrf {
        actions(&mut b, name, c, st, targets);
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

    b.push_str(&history::section(&st.history, st.now));
    queues(&mut b, name, &st.gauges, show_all);
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

/// True for a gauge of the database itself (the maintenance task's WAL
/// size and page counts), shown apart from the queues.
fn is_db_gauge(g: &TaskGauge) -> bool {
    g.task == "maintain" || g.queue == "maintenance"
}

/// A gauge worth a look: something dead, failing or retrying.
fn is_bad(g: &TaskGauge) -> bool {
    g.value > 0
        && matches!(
            g.state.as_str(),
            "dead" | "failing" | "retrying" | "check-failed"
        )
}

/// The Queues table (counts of work, zero rows hidden unless `all`) and
/// the Database table (WAL bytes, pages).
fn queues(b: &mut String, name: &str, gauges: &[TaskGauge], all: bool) {
    let (db, queue): (Vec<&TaskGauge>, Vec<&TaskGauge>) =
        gauges.iter().partition(|g| is_db_gauge(g));
    let shown: Vec<&&TaskGauge> = queue.iter().filter(|g| all || g.value != 0).collect();
    let hidden = queue.len() - shown.len();
    if !queue.is_empty() {
        b.push_str("<h2>Queues</h2>\n");
        if shown.is_empty() {
            b.push_str("<p class=\"dim\">Every queue is empty.</p>\n");
        } else {
            b.push_str("<table id=\"queues\">\n<tr><th>Task</th><th>Queue</th><th>State</th><th class=\"num\">Count</th></tr>\n");
            for g in shown {
                let _ = writeln!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td{}>{}</td><td class=\"num\">{}</td></tr>",
                    esc(&g.task),
                    esc(&g.queue),
                    if is_bad(g) { " class=\"bad\"" } else { "" },
                    esc(&g.state),
                    g.value
                );
            }
            b.push_str("</table>\n");
        }
        let n = esc(name);
        if hidden > 0 {
            let _ = writeln!(
                b,
                "<p class=\"dim\">{hidden} empty row{} hidden &middot; <a href=\"/r/{n}?all=1\">show all</a></p>",
                if hidden == 1 { "" } else { "s" }
            );
        } else if all {
            let _ = writeln!(
                b,
                "<p class=\"dim\"><a href=\"/r/{n}\">hide empty rows</a></p>"
            );
        }
    }
    if !db.is_empty() {
        b.push_str("<h2>Database</h2>\n<table id=\"database\">\n");
        for g in db {
            let value = if g.state.ends_with("-bytes") {
                bytes(g.value)
            } else {
                g.value.to_string()
            };
            let _ = writeln!(
                b,
                "<tr><th>{}</th><td class=\"num{}\">{}</td></tr>",
                esc(&g.state),
                if is_bad(g) { " bad" } else { "" },
                esc(&value)
            );
        }
        b.push_str("</table>\n");
    }
}

/// A size in bytes, in words a person reads at a glance.
fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    if n < 1024.0 {
        format!("{n} B")
    } else if n < 1024.0 * 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else if n < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else {
        format!("{:.1} GiB", n / 1024.0 / 1024.0 / 1024.0)
    }
}

/// One action button: a POST form with the CSRF token.
fn button(name: &str, csrf: &str, action: &str, id: Option<i64>, label: &str) -> String {
    format!(
        "<form class=\"inline\" method=\"post\" action=\"/r/{}/actions/{action}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\">{}<button type=\"submit\">{}</button></form>",
        esc(name),
        esc(csrf),
        id.map(|i| format!("<input type=\"hidden\" name=\"id\" value=\"{i}\">"))
            .unwrap_or_default(),
        esc(label)
    )
}

/// The Actions section: run now, retry dead mail, each hook and endpoint.
fn actions(b: &mut String, name: &str, csrf: &str, st: &Status, t: &Targets) {
    b.push_str("<h2>Actions</h2>\n<p id=\"actions\">");
    b.push_str(&button(name, csrf, "run-now", None, "Run now"));
    let dead = st
        .gauges
        .iter()
        .find(|g| g.queue == "outbox" && g.state == "dead")
        .map_or(0, |g| g.value);
    if dead > 0 {
        b.push(' ');
        b.push_str(&button(
            name,
            csrf,
            "outbox-retry",
            None,
            &format!(
                "Retry {dead} dead message{}",
                if dead == 1 { "" } else { "s" }
            ),
        ));
    }
    b.push_str("</p>\n");
    if !t.hooks.is_empty() || !t.webhooks.is_empty() {
        b.push_str("<table id=\"targets\">\n<tr><th>Target</th><th>State</th><th></th></tr>\n");
        for (h, s) in &t.hooks {
            let paused = s
                .as_ref()
                .is_some_and(|s| s.next_attempt == backoffice::ledger::PAUSED);
            let failing = s.as_ref().is_some_and(|s| s.failures > 0);
            let state = if paused {
                "paused".to_owned()
            } else if failing {
                let n = s.as_ref().map_or(0, |s| s.failures);
                format!("{n} failure{} in a row", if n == 1 { "" } else { "s" })
            } else {
                "ok".to_owned()
            };
            let mut btns = String::new();
            if paused || failing {
                btns.push_str(&button(
                    name,
                    csrf,
                    "hook-resume",
                    Some(h.id),
                    if paused { "Resume" } else { "Retry now" },
                ));
            }
            if !paused {
                btns.push_str(&button(name, csrf, "hook-pause", Some(h.id), "Pause"));
            }
            let _ = writeln!(
                b,
                "<tr><td>hook {} <code>{}</code></td><td{}>{}</td><td>{btns}</td></tr>",
                h.id,
                esc(&h.cmd),
                if failing && !paused {
                    " class=\"bad\""
                } else {
                    ""
                },
                esc(&state)
            );
        }
        for w in &t.webhooks {
            let paused = w.next_attempt == backoffice::ledger::PAUSED;
            let dead = w.state == "dead";
            let state = if dead {
                "dead".to_owned()
            } else if paused {
                "paused".to_owned()
            } else if w.failures > 0 {
                format!(
                    "{} failure{} in a row",
                    w.failures,
                    if w.failures == 1 { "" } else { "s" }
                )
            } else {
                "active".to_owned()
            };
            let mut btns = String::new();
            if dead || paused || w.failures > 0 {
                btns.push_str(&button(
                    name,
                    csrf,
                    "webhook-resume",
                    Some(w.id),
                    if paused { "Resume" } else { "Retry now" },
                ));
            }
            if !paused && !dead {
                btns.push_str(&button(name, csrf, "webhook-pause", Some(w.id), "Pause"));
            }
            let _ = writeln!(
                b,
                "<tr><td>webhook #{} <code>{}</code></td><td{}>{}</td><td>{btns}</td></tr>",
                w.id,
                esc(&w.url),
                if dead || (w.failures > 0 && !paused) {
                    " class=\"bad\""
                } else {
                    ""
                },
                esc(&state)
            );
        }
        b.push_str("</table>\n");
    }
}

/// The redacted summary (`web-public-summary`): counts, ages, history and
/// which tasks have problems — never a problem's text, an address, a
/// command, a peer, a setting or an event.
fn summary(name: &str, st: &Status, show_all: bool) -> String {
    let mut b = String::new();
    let n = esc(name);
    let _ = writeln!(
        b,
        "<h1>{n}</h1>\n<p class=\"dim\">summary, {} UTC &middot; <a href=\"/r/{n}/login\">sign in</a> for details and actions &middot; <a href=\"/\">all repositories</a></p>",
        esc(&clock::format_utc(st.now))
    );
    let last = match &st.last_run {
        Some(r) => format!(
            "{} ({}, {} ms)",
            clock::relative(r.started, st.now),
            count(r.items(), "item"),
            r.elapsed_us / 1000
        ),
        None => "never".to_owned(),
    };
    let running = st.current.pid > 0 && st.current.alive;
    let _ = writeln!(
        b,
        "<table class=\"facts\">\n<tr><th>Worker</th><td>{}</td></tr>\n<tr><th>Last run</th><td>{}</td></tr>\n\
<tr><th>Totals</th><td>{}, {}, {}</td></tr>\n</table>",
        if running { "running" } else { "idle" },
        esc(&last),
        count(st.totals.runs, "run"),
        count(st.totals.items, "item"),
        count(st.totals.failures, "task failure"),
    );
    b.push_str("<h2>Problems</h2>\n");
    if st.problems.is_empty() {
        b.push_str("<p class=\"ok\">None.</p>\n");
    } else {
        let mut by: Vec<(String, usize)> = Vec::new();
        for s in &st.problem_sources {
            match by.iter_mut().find(|(k, _)| k == s) {
                Some((_, c)) => *c += 1,
                None => by.push((s.clone(), 1)),
            }
        }
        b.push_str("<ul class=\"problems\">\n");
        for (src, c) in by {
            let _ = writeln!(b, "<li>{}: {}</li>", esc(&src), count(c as u64, "problem"));
        }
        b.push_str("</ul>\n");
    }
    b.push_str(&history::section(&st.history, st.now));
    queues(&mut b, name, &st.gauges, show_all);
    page(&format!("{name} — backoffice"), Some(30), &b)
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
