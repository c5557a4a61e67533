//! `GET /metrics`: Prometheus text exposition, one series per repository.
//!
//! A repository's series are in the reply only for a scraper that may see
//! them: one sending its read-only metrics token (`backoffice token
//! --metrics`) or its API token as `Authorization: Bearer`, or anyone when
//! its `web-public-summary` is on (the series are counts only). A request
//! that may see no repository is a 401.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use backoffice::token::{self, METRICS_TOKEN_ROW, Verdict};

use super::app::App;
use super::respond::{bearer, blocking, unauthorized, web_status};
use super::session;
use super::store::Store;

/// `GET /metrics`.
pub async fn get_metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let presented = bearer(&headers).map(str::to_owned);
    blocking(app, move |app| {
        let (text, shown) = render(app, presented.as_deref());
        if shown == 0 && !app.site.list().is_empty() {
            return Err(unauthorized(if presented.is_some() {
                "this token opens no repository's metrics"
            } else {
                "metrics need a token: send `Authorization: Bearer TOKEN` (`backoffice token --metrics` makes a read-only one)"
            }));
        }
        Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response())
    })
    .await
}

/// Escapes a label value (backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, String)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: String, value: impl std::fmt::Display) {
        self.samples.push((labels, value.to_string()));
    }
}

/// True if a scraper presenting `presented` may see `store`'s series.
fn may_scrape(store: &Store, presented: Option<&str>) -> bool {
    if let Some(t) = presented {
        for row in [METRICS_TOKEN_ROW, token::TOKEN_ROW] {
            if token::verify_in(store.db(), row, t).ok() == Some(Verdict::Valid) {
                return true;
            }
        }
    }
    session::public_summary(store).unwrap_or(false)
}

/// The metrics text for every served repository the scraper may see, and
/// how many those were.
fn render(app: &App, presented: Option<&str>) -> (String, usize) {
    let mut shown = 0usize;
    let mut runs = Family::new(
        "backoffice_runs_total",
        "counter",
        "Worker runs recorded in the repository.",
    );
    let mut items = Family::new(
        "backoffice_items_total",
        "counter",
        "Items handled by all runs (alerts sent, hooks run, deliveries...).",
    );
    let mut failures = Family::new(
        "backoffice_task_failures_total",
        "counter",
        "Task runs that failed.",
    );
    let mut age = Family::new(
        "backoffice_last_run_age_seconds",
        "gauge",
        "Seconds since the last run started.",
    );
    let mut queue = Family::new(
        "backoffice_queue",
        "gauge",
        "Queue depth by task, queue and state.",
    );
    let mut problems = Family::new(
        "backoffice_problems",
        "gauge",
        "Problems status reports (failing hooks, dead messages, bad settings).",
    );
    let mut worker = Family::new(
        "backoffice_worker_running",
        "gauge",
        "1 while a worker holds the lease.",
    );
    let mut started = Family::new(
        "backoffice_workers_started_total",
        "counter",
        "Workers this server process started after requests.",
    );
    let mut checks = Family::new(
        "backoffice_checks_total",
        "counter",
        "After-request checks this server process ran.",
    );
    let mut up = Family::new(
        "backoffice_repository_up",
        "gauge",
        "1 if the repository could be read.",
    );
    for name in app.site.list() {
        let l = format!("repo=\"{}\"", label(&name));
        let read = app.site.with_repo(&name, |r| {
            may_scrape(r, presented).then(|| web_status(app, &name, r))
        });
        // Not this scraper's: not even its name is shown.
        if matches!(read, Some(Ok(None))) {
            continue;
        }
        shown += 1;
        started.add(format!("{{{l}}}"), app.workers_started(&name));
        checks.add(format!("{{{l}}}"), app.checks_run(&name));
        let st = match read {
            Some(Ok(Some(Ok(st)))) => st,
            _ => {
                up.add(format!("{{{l}}}"), 0);
                continue;
            }
        };
        up.add(format!("{{{l}}}"), 1);
        runs.add(format!("{{{l}}}"), st.totals.runs);
        items.add(format!("{{{l}}}"), st.totals.items);
        failures.add(format!("{{{l}}}"), st.totals.failures);
        if let Some(a) = st.last_run_age {
            age.add(format!("{{{l}}}"), a);
        }
        problems.add(format!("{{{l}}}"), st.problems.len());
        worker.add(
            format!("{{{l}}}"),
            u8::from(st.current.pid > 0 && st.current.alive),
        );
        for g in &st.gauges {
            queue.add(
                format!(
                    "{{{l},task=\"{}\",queue=\"{}\",state=\"{}\"}}",
                    label(&g.task),
                    label(&g.queue),
                    label(&g.state)
                ),
                g.value,
            );
        }
    }
    let mut out = String::new();
    for f in [
        up, runs, items, failures, age, worker, checks, started, problems, queue,
    ] {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, v) in f.samples {
            let _ = writeln!(out, "{}{labels} {v}", f.name);
        }
    }
    (out, shown)
}
