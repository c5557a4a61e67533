//! The routes, shared by `serve` and `cgi`.
//!
//! | Route | What |
//! |---|---|
//! | `GET /` | the repositories, each with its last run and anything failing |
//! | `GET /r/NAME` | the status page (HTML, no JavaScript) |
//! | `GET /r/NAME/status.json` | the same facts as JSON |
//! | `POST /r/NAME/events` | publish an event (token) |
//! | `GET`, `POST /r/NAME/subscribers` | list, add subscribers (token) |
//! | `DELETE /r/NAME/subscribers/WHO` | remove one, by address or id (token) |
//! | `GET`, `POST /r/NAME/unsubscribe/CODE` | the one-click unsubscribe target (RFC 8058) |
//! | `GET /metrics` | Prometheus text for every repository |
//! | `GET`, `PUT /replica/NAME` | ask whether a copy would be taken; a copy pushed by a peer (`serve --replica-dir`; its own token) |
//!
//! Handlers run their SQLite work on blocking threads. Errors are JSON
//! (`{"error": "..."}`) on API routes and small HTML pages elsewhere; a
//! failure inside the server is logged in full and answered without
//! details, so no path or SQL reaches a client.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use backoffice::Repo;
use backoffice::token::{self, Verdict};
use backoffice_tasks::notify::subscribers;
use serde::Deserialize;

use super::{App, pages};

/// A reply that is not a success.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
    html: bool,
    bearer: bool,
    retry_after: bool,
}

impl Failure {
    /// A failure with this status and message (JSON).
    pub fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
            html: false,
            bearer: false,
            retry_after: false,
        }
    }

    /// The repository's write lock stayed taken for the whole busy timeout:
    /// 503 with `Retry-After`, since the same request will work once the
    /// other writer is done. Never a 500: nothing is broken.
    pub(crate) fn busy() -> Failure {
        Failure {
            retry_after: true,
            ..Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the repository is busy with another writer; try again shortly",
            )
        }
    }

    /// [`Failure::busy`] for a busy or locked database, else
    /// [`Failure::internal`].
    pub(crate) fn sqlite(what: &str, e: rusqlite::Error) -> Failure {
        if is_busy(&e) {
            tracing::warn!("{what}: {e}");
            Failure::busy()
        } else {
            Failure::internal(what, e)
        }
    }

    /// The same, shown as an HTML page.
    pub fn html(mut self) -> Failure {
        self.html = true;
        self
    }

    fn no_repo(name: &str) -> Failure {
        // The name the client sent, never a path.
        Failure::new(
            StatusCode::NOT_FOUND,
            format!("no repository named {name:?}"),
        )
    }

    /// Something broke inside the server: logged here in full, answered
    /// with no details.
    pub(crate) fn internal(what: &str, e: impl std::fmt::Display) -> Failure {
        tracing::error!("{what}: {e}");
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what} failed; the server log says why"),
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut resp = if self.html {
            let body = pages::error_page(self.status, &self.message);
            (self.status, html_type(), body).into_response()
        } else {
            let body = serde_json::json!({ "error": self.message }).to_string();
            (self.status, json_type(), body).into_response()
        };
        if self.bearer {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"backoffice\""),
            );
        }
        if self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

fn html_type() -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    )]
}

fn json_type() -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )]
}

/// A JSON reply.
fn json(status: StatusCode, v: &impl serde::Serialize) -> Response {
    match serde_json::to_string_pretty(v) {
        Ok(s) => (status, json_type(), s).into_response(),
        Err(e) => Failure::internal("encoding the reply", e).into_response(),
    }
}

type Reply = Result<Response, Failure>;

/// True for SQLite's "busy" and "locked": another connection held the lock
/// for longer than the busy timeout.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Runs `f` on repository `name` on a blocking thread.
async fn on_repo<F>(app: Arc<App>, name: String, html: bool, f: F) -> Response
where
    F: FnOnce(&App, &mut Repo) -> Reply + Send + 'static,
{
    on_repo_as(app, name, html, false, f).await
}

/// [`on_repo`] for a request that writes: the whole request runs behind
/// the repository's in-process write gate ([`App::write_gate`]), its reads
/// (the token) included, so this server's writers to one repository take
/// turns instead of all polling SQLite's locks, where under a burst some
/// would wait out the whole busy timeout (in rollback-journal mode a
/// reader also waits while a writer commits).
async fn on_repo_write<F>(app: Arc<App>, name: String, html: bool, f: F) -> Response
where
    F: FnOnce(&App, &mut Repo) -> Reply + Send + 'static,
{
    on_repo_as(app, name, html, true, f).await
}

async fn on_repo_as<F>(app: Arc<App>, name: String, html: bool, write: bool, f: F) -> Response
where
    F: FnOnce(&App, &mut Repo) -> Reply + Send + 'static,
{
    let joined = tokio::task::spawn_blocking(move || {
        let _gate = write.then(|| app.write_gate(&name));
        match app.site.with_repo(&name, |repo| f(&app, repo)) {
            None => Err(Failure::no_repo(&name)),
            Some(Err(backoffice::Error::Locked { .. })) => Err(Failure::busy()),
            Some(Err(e)) => Err(Failure::internal("opening the repository", e)),
            Some(Ok(reply)) => reply,
        }
    })
    .await;
    let reply = joined.unwrap_or_else(|e| Err(Failure::internal("the request handler", e)));
    match reply {
        Ok(r) => r,
        Err(mut f) => {
            f.html |= html;
            f.into_response()
        }
    }
}

/// Runs `f` on a blocking thread (for pages over every repository).
async fn blocking<F>(app: Arc<App>, f: F) -> Response
where
    F: FnOnce(&App) -> Reply + Send + 'static,
{
    match tokio::task::spawn_blocking(move || f(&app)).await {
        Ok(Ok(r)) => r,
        Ok(Err(f)) => f.into_response(),
        Err(e) => Failure::internal("the request handler", e).into_response(),
    }
}

/// The router, with request limits and security headers. The after-request
/// check is not in here: each front end runs it after its reply is sent.
pub fn router(app: Arc<App>) -> Router {
    // Replicas stream to disk, so they are outside the buffered-body limit.
    let replicas = Router::new().route(
        "/replica/{name}",
        put(super::replica::receive).get(super::replica::probe),
    );
    let main = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/r/{name}", get(status_page))
        .route("/r/{name}/", get(status_page))
        .route("/r/{name}/status.json", get(status_json))
        .route("/r/{name}/events", post(post_event))
        .route(
            "/r/{name}/subscribers",
            get(list_subscribers)
                .post(add_subscriber)
                .delete(remove_subscriber_query),
        )
        .route("/r/{name}/subscribers/{who}", delete(remove_subscriber))
        .route(
            "/r/{name}/unsubscribe/{code}",
            get(unsubscribe_form).post(unsubscribe),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), read_body));
    replicas
        .merge(main)
        .layer(middleware::from_fn(security_headers))
        .with_state(app)
}

async fn not_found(req: Request) -> Response {
    let html = !req.uri().path().ends_with(".json");
    let mut f = Failure::new(StatusCode::NOT_FOUND, "no such page");
    f.html = html;
    f.into_response()
}

/// Reads the whole body up front, within the size and time limits, so a
/// slow or oversized upload is refused in one place for every route.
async fn read_body(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let max = app.limits.max_body;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large(max);
    }
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(app.limits.body_timeout, axum::body::to_bytes(body, max));
    let bytes = match read.await {
        Err(_) => {
            return Failure::new(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            )
            .into_response();
        }
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if over {
                return too_large(max);
            }
            return Failure::new(StatusCode::BAD_REQUEST, "could not read the request body")
                .into_response();
        }
        Ok(Ok(b)) => b,
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn too_large(max: usize) -> Response {
    Failure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {max} bytes"),
    )
    .into_response()
}

/// Headers every reply carries. The pages need no script, no frame and no
/// outside resource, so the policy forbids all of them; `no-referrer`
/// keeps unsubscribe codes (which are in URLs) from leaking onwards.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The bearer token of a request, if it sent one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
}

/// A 401 that asks for a bearer token.
pub(crate) fn unauthorized(msg: &str) -> Failure {
    Failure {
        bearer: true,
        ..Failure::new(StatusCode::UNAUTHORIZED, msg)
    }
}

/// Checks `Authorization: Bearer TOKEN` against the repository's token.
fn authorize(repo: &Repo, headers: &HeaderMap) -> Result<(), Failure> {
    let Some(presented) = bearer(headers) else {
        return Err(unauthorized(
            "this needs an API token: send `Authorization: Bearer TOKEN`",
        ));
    };
    match token::verify(repo.conn(), presented) {
        Ok(Verdict::Valid) => Ok(()),
        Ok(Verdict::Invalid) => Err(unauthorized("the API token is not valid")),
        Ok(Verdict::NoToken) => Err(Failure::new(
            StatusCode::FORBIDDEN,
            "the API is off for this repository: its administrator makes a token with `backoffice token`",
        )),
        Err(e) => Err(Failure::sqlite("checking the token", e)),
    }
}

/// Parses a JSON body, with a message that says what is wrong with it.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    if body.is_empty() {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")))
}

async fn index(State(app): State<Arc<App>>) -> Response {
    blocking(app, |app| Ok(pages::index(app))).await
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    blocking(app, |app| {
        let text = super::metrics::render(app);
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

/// The status of `name`, with the repository shown by name (never its path).
pub fn web_status(
    app: &App,
    name: &str,
    repo: &Repo,
) -> Result<backoffice::status::Status, Failure> {
    let mut st = backoffice::status::status(repo, app.bo.tasks()).map_err(|e| match e {
        // Status waits only briefly for a lock (it is on a request's path):
        // another writer holding it is "try again", not a failure.
        backoffice::Error::Locked { .. } => {
            tracing::warn!("reading the status of {name}: {e}");
            Failure::busy()
        }
        e => Failure::internal("reading the status", e),
    })?;
    st.repo = name.to_owned();
    Ok(st)
}

async fn status_page(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    on_repo(app, name.clone(), true, move |app, repo| {
        let st = web_status(app, &name, repo)?;
        let events = backoffice::events::recent_events(repo.conn(), 10)
            .map_err(|e| Failure::sqlite("reading recent events", e))?;
        let page = pages::status(&name, &st, &events, app.workers_started(&name));
        Ok((html_type(), page).into_response())
    })
    .await
}

async fn status_json(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    on_repo(app, name.clone(), false, move |app, repo| {
        Ok(json(StatusCode::OK, &web_status(app, &name, repo)?))
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

async fn post_event(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    on_repo_write(app, name, false, move |_, repo| {
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
        match backoffice::events::publish(repo.conn(), &ev) {
            Ok(id) => Ok(json(
                StatusCode::CREATED,
                &serde_json::json!({ "id": id, "kind": ev.kind }),
            )),
            Err(backoffice::events::PublishError::Sqlite(e)) => {
                Err(Failure::sqlite("publishing", e))
            }
            Err(e) => Err(Failure::new(StatusCode::BAD_REQUEST, e.to_string())),
        }
    })
    .await
}

async fn list_subscribers(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    on_repo(app, name, false, move |_, repo| {
        authorize(repo, &headers)?;
        let all = match subscribers::list(repo.conn()) {
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

async fn add_subscriber(
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
        match backoffice::repo::immediate(repo.conn(), || subscribers::add(repo.conn(), &new)) {
            Ok(s) => Ok(json(StatusCode::CREATED, &s)),
            Err(e) => Err(subscriber_failure(e)),
        }
    })
    .await
}

#[derive(Debug, Deserialize)]
struct WhoQuery {
    address: Option<String>,
    id: Option<i64>,
}

async fn remove_subscriber_query(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<WhoQuery>,
    headers: HeaderMap,
) -> Response {
    let who = q.address.or(q.id.map(|i| i.to_string()));
    remove(app, name, who, headers).await
}

async fn remove_subscriber(
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
        match backoffice::repo::immediate(repo.conn(), || subscribers::remove(repo.conn(), &who)) {
            Ok(s) => Ok(json(StatusCode::OK, &serde_json::json!({ "removed": s }))),
            Err(e) => Err(subscriber_failure(e)),
        }
    })
    .await
}

fn subscriber_failure(e: subscribers::SubscriberError) -> Failure {
    use subscribers::SubscriberError as E;
    match e {
        E::Sqlite(e) => Failure::sqlite("the subscriber change", e),
        E::NotFound(_) => Failure::new(StatusCode::NOT_FOUND, e.to_string()),
        E::Duplicate(_) => Failure::new(StatusCode::CONFLICT, e.to_string()),
        e => Failure::new(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn unsubscribe_form(
    State(app): State<Arc<App>>,
    Path((name, code)): Path<(String, String)>,
) -> Response {
    // A GET changes nothing: mail scanners fetch links. It shows a button
    // that POSTs, which is also what RFC 8058 one-click clients send.
    on_repo(
        app,
        name.clone(),
        true,
        move |_, repo| match subscribers::find_by_code(repo.conn(), &code) {
            Ok(Some(s)) => Ok((html_type(), pages::unsubscribe_form(&name, &s)).into_response()),
            Ok(None) => Err(bad_code()),
            Err(e) => Err(subscriber_failure(e)),
        },
    )
    .await
}

async fn unsubscribe(
    State(app): State<Arc<App>>,
    Path((name, code)): Path<(String, String)>,
) -> Response {
    on_repo_write(
        app,
        name.clone(),
        true,
        move |_, repo| match backoffice::repo::immediate(repo.conn(), || {
            subscribers::unsubscribe_by_code(repo.conn(), &code)
        }) {
            Ok(Some(addr)) => Ok((html_type(), pages::unsubscribed(&name, &addr)).into_response()),
            Ok(None) => Err(bad_code()),
            Err(e) => Err(subscriber_failure(e)),
        },
    )
    .await
}

fn bad_code() -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        "this unsubscribe link is not valid: it may have been mistyped, or the subscription removed",
    )
    .html()
}
