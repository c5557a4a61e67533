//! The HTML pages. No JavaScript, no outside resources, one inline style
//! sheet; every value from a repository or a request goes through [`esc`].

use std::fmt::Write;

use axum::http::StatusCode;
use backoffice::clock;
use backoffice::events::StoredEvent;
use backoffice::status::Status;
use backoffice_tasks::notify::subscribers::Subscriber;

use super::App;

/// "1 run", "2 runs".
fn count(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:60em;padding:0 1em;color:#222}\
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse}td,th{text-align:left;padding:.15em .8em .15em 0;vertical-align:top}\
th{font-weight:600}.facts th{width:9em}.bad{color:#a00}.ok{color:#070}.dim{color:#777}\
pre{background:#f5f5f5;padding:.6em;white-space:pre-wrap;overflow-wrap:anywhere;font-size:13px}\
.problems li{color:#a00}code{background:#f3f3f3;padding:0 .2em}";

/// A whole page around `body`; `refresh` reloads it every N seconds.
fn page(title: &str, refresh: Option<u32>, body: &str) -> String {
    let refresh = refresh
        .map(|n| format!("<meta http-equiv=\"refresh\" content=\"{n}\">"))
        .unwrap_or_default();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\">{refresh}\
<title>{}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n",
        esc(title)
    )
}

/// A page for an error reply.
pub fn error_page(status: StatusCode, message: &str) -> String {
    let code = status.as_u16();
    let reason = status.canonical_reason().unwrap_or("");
    page(
        &format!("{code} {reason}"),
        None,
        &format!(
            "<h1>{code} {}</h1>\n<p>{}</p>\n<p><a href=\"/\">All repositories</a></p>",
            esc(reason),
            esc(message)
        ),
    )
}

/// `GET /`: every repository, its last run and anything failing.
pub fn index(app: &App) -> axum::response::Response {
    use axum::response::IntoResponse;
    let list = app.site.list();
    let mut rows = String::new();
    for (name, _) in &list {
        let cell = match app
            .site
            .with_repo(name, |r| super::router::web_status(app, name, r))
        {
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
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page("backoffice", Some(30), &body),
    )
        .into_response()
}

/// `GET /r/NAME`: one repository at a glance.
pub fn status(name: &str, st: &Status, events: &[StoredEvent], started_here: u64) -> String {
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
<tr><th>Due next</th><td>{}</td></tr>\n<tr><th>Totals</th><td>{}, {}, {}{}</td></tr>\n\
<tr><th>This server</th><td>started {started_here} worker{}</td></tr>\n</table>",
        esc(&st.on_deck_words()),
        esc(&st.next_due_words()),
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
                e.eventid,
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

/// `GET /r/NAME/unsubscribe/CODE`: a button, since a GET changes nothing.
pub fn unsubscribe_form(name: &str, s: &Subscriber) -> String {
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
pub fn unsubscribed(name: &str, address: &str) -> String {
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
