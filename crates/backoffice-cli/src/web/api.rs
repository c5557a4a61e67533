//! The JSON API under `/r/NAME`: the status as JSON, publishing events, and
//! managing subscribers. Every route needs the repository's API token
//! (`backoffice token`), but `status.json` also answers a session, and
//! with `web-public-summary` on gives anyone a redacted summary; the
//! checks, the error replies and the handler runners are in `respond.rs`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use backoffice_tasks::notify::subscribers;
use serde::Deserialize;

use super::app::App;
use super::respond::{
    Failure, authorize, json, on_repo, on_repo_write, parse_json, subscriber_failure, unauthorized,
    web_status,
};
use super::session::{self, Access};

/// `GET /r/NAME/status.json`: the status page's facts, with the token
/// (bearer or session); the redacted summary's if `web-public-summary` is
/// on; else 401.
pub async fn status_json(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    on_repo(app, name.clone(), false, move |app, repo| {
        let acc = session::access(repo, &headers, backoffice::clock::now())
            .map_err(|e| Failure::db("checking access", e))?;
        match acc {
            Access::Full { .. } => Ok(json(StatusCode::OK, &web_status(app, &name, repo)?)),
            Access::Summary => {
                let st = web_status(app, &name, repo)?;
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "repo": st.repo,
                        "now": st.now,
                        "redacted": true,
                        "running": st.current.pid > 0 && st.current.alive,
                        "last_run_age": st.last_run_age,
                        "last_run_items": st.last_run.as_ref().map(|r| r.items()),
                        "totals": st.totals,
                        "problems": st.problems.len(),
                        "problem_sources": st.problem_sources,
                        "gauges": st.gauges,
                        "history": st.history,
                    }),
                ))
            }
            Access::None => Err(unauthorized(
                "this needs the repository's token: send `Authorization: Bearer TOKEN`",
            )),
        }
    })
    .await
}

/// `POST /r/NAME/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIn {
    kind: String,
    title: String,
    #[serde(default)]
    body: String,
    url: Option<String>,
    author: Option<String>,
    time: Option<i64>,
}

/// `POST /r/NAME/events`: publishes an event (token).
pub async fn post_event(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    on_repo_write(app, name, false, move |app, repo| {
        authorize(repo, &headers)?;
        let ev: EventIn = parse_json(&body)?;
        let ev = backoffice::events::Event {
            kind: ev.kind,
            title: ev.title,
            body: ev.body,
            url: ev.url,
            author: ev.author,
            time: ev.time,
        };
        match repo.publish(&ev) {
            Ok(id) => {
                app.published(repo);
                Ok(json(
                    StatusCode::CREATED,
                    &serde_json::json!({ "id": id, "kind": ev.kind }),
                ))
            }
            Err(backoffice::events::PublishError::Sqlite(e)) => {
                Err(Failure::sqlite("publishing", e))
            }
            Err(e @ backoffice::events::PublishError::Store(_)) => {
                Err(Failure::unavailable("publishing", e))
            }
            Err(e) => Err(Failure::new(StatusCode::BAD_REQUEST, e.to_string())),
        }
    })
    .await
}

/// `GET /r/NAME/subscribers`: every subscriber (token).
pub async fn list_subscribers(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    on_repo(app, name, false, move |_, repo| {
        authorize(repo, &headers)?;
        let all = match repo.subscribers() {
            Ok(v) => v,
            Err(e) => return Err(subscriber_failure(e)),
        };
        Ok(json(StatusCode::OK, &all))
    })
    .await
}

/// `POST /r/NAME/subscribers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriberIn {
    address: String,
    name: Option<String>,
    kinds: Option<String>,
    #[serde(default)]
    digest: bool,
    #[serde(default)]
    verified: bool,
}

/// `POST /r/NAME/subscribers`: adds one (token).
pub async fn add_subscriber(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    on_repo_write(app, name, false, move |_, repo| {
        authorize(repo, &headers)?;
        let s: SubscriberIn = parse_json(&body)?;
        let new = subscribers::New {
            address: s.address,
            name: s.name,
            kinds: s.kinds.unwrap_or_else(|| "*".into()),
            digest: s.digest,
            verified: s.verified,
        };
        match repo.add_subscriber(&new) {
            Ok(s) => Ok(json(StatusCode::CREATED, &s)),
            Err(e) => Err(subscriber_failure(e)),
        }
    })
    .await
}

/// `DELETE /r/NAME/subscribers?address=...` or `?id=...`: whom to remove.
#[derive(Debug, Deserialize)]
pub struct WhoQuery {
    address: Option<String>,
    id: Option<i64>,
}

/// `DELETE /r/NAME/subscribers?address=...` (or `?id=`): removes one (token).
pub async fn remove_subscriber_query(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<WhoQuery>,
    headers: HeaderMap,
) -> Response {
    let who = q.address.or(q.id.map(|i| i.to_string()));
    remove(app, name, who, headers).await
}

/// `DELETE /r/NAME/subscribers/WHO`: removes one by address or id (token).
pub async fn remove_subscriber(
    State(app): State<Arc<App>>,
    Path((name, who)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    remove(app, name, Some(who), headers).await
}

async fn remove(app: Arc<App>, name: String, who: Option<String>, headers: HeaderMap) -> Response {
    on_repo_write(app, name, false, move |_, repo| {
        authorize(repo, &headers)?;
        let Some(who) = who else {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "say whom to remove: DELETE /r/NAME/subscribers/ADDRESS or ?address=ADDRESS",
            ));
        };
        match repo.remove_subscriber(&who) {
            Ok(s) => Ok(json(StatusCode::OK, &serde_json::json!({ "removed": s }))),
            Err(e) => Err(subscriber_failure(e)),
        }
    })
    .await
}
