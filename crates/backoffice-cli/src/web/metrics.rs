//! `GET /metrics`: Prometheus text exposition, one series per repository.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::app::App;
use super::respond::{blocking, web_status};

/// `GET /metrics`.
pub async fn get_metrics(State(app): State<Arc<App>>) -> Response {
    blocking(app, |app| {
        let text = render(app);
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

/// The metrics text for every served repository.
fn render(app: &App) -> String {
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
        started.add(format!("{{{l}}}"), app.workers_started(&name));
        checks.add(format!("{{{l}}}"), app.checks_run(&name));
        let st = match app.site.with_repo(&name, |r| web_status(app, &name, r)) {
            Some(Ok(Ok(st))) => st,
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
    out
}
