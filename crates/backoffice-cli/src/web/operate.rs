//! What an operator does on the web: sign in with the repository's token,
//! sign out, and act — retry dead outbox messages, pause, resume or retry
//! a hook or a webhook endpoint, start a worker now.
//!
//! | Route | What |
//! |---|---|
//! | `GET /r/NAME/login` | the token form |
//! | `POST /r/NAME/login` | `token=…`: a session cookie, then back to the status page |
//! | `POST /r/NAME/logout` | ends the session (CSRF token) |
//! | `POST /r/NAME/actions/ACTION` | one action: a form with the session and its CSRF token, or JSON with the bearer token |
//!
//! Actions: `outbox-retry` (`id` optional: every dead message),
//! `hook-pause`, `hook-resume` (also `hook-retry`), `webhook-pause`,
//! `webhook-resume` (also `webhook-retry`), each with `id`, and
//! `run-now`. Nothing here changes state on GET. Sessions and access are
//! in `session.rs`; replies and pages in `respond.rs`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backoffice::{Started, clock};
use backoffice_tasks::{hooks, webhooks};
use serde::Deserialize;

use super::app::App;
use super::respond::{
    Failure, authorize, bearer, esc, html_type, json, login_page, on_repo, on_repo_write, page,
    parse_json,
};
use super::session::{self, Login};
use super::store::Store;

/// The actions, for the pages' forms and the documentation.
pub const ACTIONS: &[&str] = &[
    "outbox-retry",
    "hook-pause",
    "hook-resume",
    "hook-retry",
    "webhook-pause",
    "webhook-resume",
    "webhook-retry",
    "run-now",
];

/// A 303 to `to`.
fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The time on the repository's store (the database's on PostgreSQL).
fn store_now(repo: &Store) -> i64 {
    match repo {
        Store::File(_) => clock::now(),
        Store::Pg(c) => backoffice_tasks::notify::pg::db_now(backoffice::Db::Postgres(c))
            .unwrap_or_else(|_| clock::now()),
    }
}

/// `GET /r/NAME/login`.
pub async fn get_login(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    on_repo(app, name.clone(), true, move |_, repo| {
        let acc = session::access(repo, &headers, clock::now())
            .map_err(|e| Failure::db("checking the session", e))?;
        if acc.full() {
            return Ok(see_other(&format!("/r/{name}")));
        }
        Ok((html_type(), login_page(&name, None)).into_response())
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

/// `POST /r/NAME/login`: the token from the form opens a session.
pub async fn post_login(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    on_repo_write(app, name.clone(), true, move |_, repo| {
        let f: LoginForm = serde_urlencoded::from_bytes(&body).unwrap_or_default();
        let refused = |msg: &str| {
            (
                StatusCode::UNAUTHORIZED,
                html_type(),
                login_page(&name, Some(msg)),
            )
                .into_response()
        };
        match session::login(repo, &f.token, store_now(repo))
            .map_err(|e| Failure::db("opening a session", e))?
        {
            Login::Opened { sid, max_age } => {
                let mut r = see_other(&format!("/r/{name}"));
                r.headers_mut().insert(
                    header::SET_COOKIE,
                    session::set_cookie(&name, &sid, max_age, &headers),
                );
                Ok(r)
            }
            Login::Invalid => Ok(refused("That is not this repository's token.")),
            Login::NoToken => Ok(refused(
                "This repository has no token yet: its administrator makes one with `backoffice token`.",
            )),
        }
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
struct ActIn {
    id: Option<i64>,
    csrf: Option<String>,
}

/// `POST /r/NAME/logout`.
pub async fn post_logout(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    on_repo_write(app, name.clone(), true, move |_, repo| {
        form_session(repo, &headers, &body)?;
        session::logout(repo, &headers).map_err(|e| Failure::db("ending the session", e))?;
        let mut r = see_other(&format!("/r/{name}/login"));
        r.headers_mut().insert(
            header::SET_COOKIE,
            session::set_cookie(&name, "", 0, &headers),
        );
        Ok(r)
    })
    .await
}

/// A form's fields, once its session and CSRF token are checked.
fn form_session(repo: &Store, headers: &HeaderMap, body: &[u8]) -> Result<ActIn, Failure> {
    let f: ActIn = serde_urlencoded::from_bytes(body)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, format!("bad form: {e}")))?;
    let Some(csrf) = session::session(repo, headers, store_now(repo))
        .map_err(|e| Failure::db("checking the session", e))?
    else {
        return Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "sign in first: this needs the repository's token",
        ));
    };
    if !f
        .csrf
        .as_deref()
        .is_some_and(|c| backoffice::token::same(c, &csrf))
    {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "the form's CSRF token does not match your session: reload the page and try again",
        ));
    }
    Ok(f)
}

/// `POST /r/NAME/actions/ACTION`: a form (session and CSRF token) or JSON
/// (bearer token).
pub async fn post_action(
    State(app): State<Arc<App>>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let api = bearer(&headers).is_some();
    on_repo_write(app, name.clone(), !api, move |app, repo| {
        let input = if api {
            authorize(repo, &headers)?;
            if body.iter().all(u8::is_ascii_whitespace) {
                ActIn::default()
            } else {
                parse_json(&body)?
            }
        } else {
            form_session(repo, &headers, &body)?
        };
        let done = perform(app, repo, &action, input.id)?;
        app.published(repo);
        if api {
            return Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "action": action, "done": done }),
            ));
        }
        let n = esc(&name);
        let body = format!(
            "<h1>{n}</h1>\n<p class=\"ok\">Done: {}.</p>\n<p><a href=\"/r/{n}\">Back to the status page</a></p>",
            esc(&done)
        );
        Ok((html_type(), page(&format!("{name} — done"), None, &body)).into_response())
    })
    .await
}

/// The `id` an action needs.
fn need_id(action: &str, id: Option<i64>) -> Result<i64, Failure> {
    id.ok_or_else(|| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            format!("{action} needs the id of the hook or endpoint (`id`)"),
        )
    })
}

/// Does `action`; says what was done.
fn perform(app: &App, repo: &Store, action: &str, id: Option<i64>) -> Result<String, Failure> {
    let hook_err = |e: hooks::HookError| match e {
        hooks::HookError::NoSuchHook(_) => Failure::new(StatusCode::NOT_FOUND, e.to_string()),
        e => Failure::internal("changing the hook", e),
    };
    let webhook_err = |e: webhooks::WebhookError| match e {
        webhooks::WebhookError::NotFound(_) => Failure::new(StatusCode::NOT_FOUND, e.to_string()),
        e => Failure::internal("changing the webhook endpoint", e),
    };
    Ok(match action {
        "outbox-retry" => {
            let n = repo
                .outbox_retry(id, store_now(repo))
                .map_err(|e| Failure::db("queuing dead messages again", e))?;
            format!(
                "{n} dead message{} queued again",
                if n == 1 { "" } else { "s" }
            )
        }
        "hook-pause" => {
            let id = need_id(action, id)?;
            hooks::pause(repo.db(), id).map_err(hook_err)?;
            format!("hook {id} paused")
        }
        "hook-resume" | "hook-retry" => {
            let id = need_id(action, id)?;
            hooks::resume(repo.db(), id).map_err(hook_err)?;
            format!("hook {id} resumed, due now")
        }
        "webhook-pause" => {
            let id = need_id(action, id)?;
            webhooks::pause(repo.db(), id).map_err(webhook_err)?;
            format!("webhook #{id} paused")
        }
        "webhook-resume" | "webhook-retry" => {
            let id = need_id(action, id)?;
            webhooks::retry(repo.db(), id).map_err(webhook_err)?;
            format!("webhook #{id} active and due now")
        }
        "run-now" => match app.run_now(repo) {
            Started::Worker { pid } => format!("worker {pid} started"),
            Started::InProcess(_) => "ran in this process".to_owned(),
            Started::NotNeeded(c) => format!("no worker started: {}", c.describe()),
            Started::Failed(e) => {
                return Err(Failure::internal("starting a worker", e));
            }
        },
        other => {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!("no action {other:?}; one of: {}", ACTIONS.join(", ")),
            ));
        }
    })
}
