//! The shared response helpers: everything a route needs to answer, and
//! nothing about which routes exist. Route modules (`pages`, `api`,
//! `metrics`, `replica`) and the router use this file; it uses only
//! [`App`], so no import runs back up from a helper to a route.
//!
//! * Failures: [`Failure`] is every reply that is not a success. Errors are
//!   JSON (`{"error": "..."}`) on API routes and small HTML pages
//!   elsewhere; a failure inside the server is logged in full and answered
//!   without details, so no path or SQL reaches a client; a repository
//!   busy with another writer is a 503 with `Retry-After`, never a 500.
//! * Running a handler: [`on_repo`], [`on_repo_write`] and [`blocking`] run
//!   SQLite work on a blocking thread and turn a failure into its reply.
//! * Auth: [`bearer`], [`unauthorized`] and [`authorize`] (the
//!   repository's API token).
//! * Bodies and types: [`parse_json`], [`json`], [`html_type`],
//!   [`json_type`].
//! * HTML: [`esc`] for every value from a repository or a request, and
//!   [`page`], the one page shell (error pages included).

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backoffice::token::{self, Verdict};
use backoffice_tasks::notify::subscribers;

use super::app::App;
pub use super::clients::bearer;
use super::store::Store;

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
    pub fn busy() -> Failure {
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
    pub fn sqlite(what: &str, e: rusqlite::Error) -> Failure {
        if is_busy(&e) {
            tracing::warn!("{what}: {e}");
            Failure::busy()
        } else {
            Failure::internal(what, e)
        }
    }

    /// The repository's PostgreSQL database could not be reached or
    /// answered with an error: 503 with `Retry-After` (a restart or an
    /// outage passes), logged in full, answered without details.
    pub fn unavailable(what: &str, e: impl std::fmt::Display) -> Failure {
        tracing::error!("{what}: {e}");
        Failure {
            retry_after: true,
            ..Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{what} failed: the repository's database is unavailable; try again shortly"
                ),
            )
        }
    }

    /// A store's error: busy for SQLite's lock, unavailable for
    /// PostgreSQL, else internal.
    pub fn db(what: &str, e: backoffice::db::DbError) -> Failure {
        use backoffice::db::DbError as E;
        match e {
            E::Sqlite(e) => Failure::sqlite(what, e),
            E::Postgres(_) => Failure::unavailable(what, e),
            e => Failure::internal(what, e),
        }
    }

    /// An engine error: busy for a locked file, unavailable for
    /// PostgreSQL, else internal.
    pub fn engine(what: &str, e: backoffice::Error) -> Failure {
        match e {
            backoffice::Error::Locked { .. } => {
                tracing::warn!("{what}: {e}");
                Failure::busy()
            }
            backoffice::Error::Postgres { .. } => Failure::unavailable(what, e),
            e => Failure::internal(what, e),
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
    pub fn internal(what: &str, e: impl std::fmt::Display) -> Failure {
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
            let body = error_page(self.status, &self.message);
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

/// `Content-Type` of an HTML page.
pub fn html_type() -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    )]
}

/// `Content-Type` of a JSON reply.
pub fn json_type() -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )]
}

/// A JSON reply.
pub fn json(status: StatusCode, v: &impl serde::Serialize) -> Response {
    match serde_json::to_string_pretty(v) {
        Ok(s) => (status, json_type(), s).into_response(),
        Err(e) => Failure::internal("encoding the reply", e).into_response(),
    }
}

/// What a handler run by [`on_repo`] or [`blocking`] returns.
pub type Reply = Result<Response, Failure>;

/// True for SQLite's "busy" and "locked": another connection held the lock
/// for longer than the busy timeout.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Runs `f` on repository `name` on a blocking thread.
pub async fn on_repo<F>(app: Arc<App>, name: String, html: bool, f: F) -> Response
where
    F: FnOnce(&App, &mut Store) -> Reply + Send + 'static,
{
    on_repo_as(app, name, html, false, f).await
}

/// [`on_repo`] for a request that writes: the whole request runs behind
/// the repository's in-process write gate ([`App::write_gate`]), its reads
/// (the token) included, so this server's writers to one repository take
/// turns instead of all polling SQLite's locks, where under a burst some
/// would wait out the whole busy timeout (in rollback-journal mode a
/// reader also waits while a writer commits).
pub async fn on_repo_write<F>(app: Arc<App>, name: String, html: bool, f: F) -> Response
where
    F: FnOnce(&App, &mut Store) -> Reply + Send + 'static,
{
    on_repo_as(app, name, html, true, f).await
}

/// [`on_repo`] and [`on_repo_write`]: a missing repository is a 404, a
/// locked one a 503, and `html` makes every failure an HTML page.
async fn on_repo_as<F>(app: Arc<App>, name: String, html: bool, write: bool, f: F) -> Response
where
    F: FnOnce(&App, &mut Store) -> Reply + Send + 'static,
{
    let joined = tokio::task::spawn_blocking(move || {
        let _gate = write.then(|| app.write_gate(&name));
        match app.site.with_repo(&name, |repo| f(&app, repo)) {
            None => Err(Failure::no_repo(&name)),
            Some(Err(e)) => Err(Failure::engine("opening the repository", e)),
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
pub async fn blocking<F>(app: Arc<App>, f: F) -> Response
where
    F: FnOnce(&App) -> Reply + Send + 'static,
{
    match tokio::task::spawn_blocking(move || f(&app)).await {
        Ok(Ok(r)) => r,
        Ok(Err(f)) => f.into_response(),
        Err(e) => Failure::internal("the request handler", e).into_response(),
    }
}

/// A 401 that asks for a bearer token.
pub fn unauthorized(msg: &str) -> Failure {
    Failure {
        bearer: true,
        ..Failure::new(StatusCode::UNAUTHORIZED, msg)
    }
}

/// Checks `Authorization: Bearer TOKEN` against the repository's token.
pub fn authorize(store: &Store, headers: &HeaderMap) -> Result<(), Failure> {
    let Some(presented) = bearer(headers) else {
        return Err(unauthorized(
            "this needs an API token: send `Authorization: Bearer TOKEN`",
        ));
    };
    match token::verify(store.db(), presented) {
        Ok(Verdict::Valid) => Ok(()),
        Ok(Verdict::Invalid) => Err(unauthorized("the API token is not valid")),
        Ok(Verdict::NoToken) => Err(Failure::new(
            StatusCode::FORBIDDEN,
            "the API is off for this repository: its administrator makes a token with `backoffice token`",
        )),
        Err(e) => Err(Failure::db("checking the token", e)),
    }
}

/// Parses a JSON body, with a message that says what is wrong with it.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    if body.is_empty() {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")))
}

/// The status of `name`, with the repository shown by name (never its path).
pub fn web_status(
    app: &App,
    name: &str,
    store: &Store,
) -> Result<backoffice::status::Status, Failure> {
    // Status waits only briefly for a lock (it is on a request's path):
    // another writer holding it is "try again", not a failure.
    let mut st = store
        .status(app.bo.tasks())
        .map_err(|e| Failure::engine("reading the status", e))?;
    st.repo = name.to_owned();
    Ok(st)
}

/// A subscriber change that failed, as its reply (the API's and the
/// unsubscribe page's).
pub fn subscriber_failure(e: subscribers::SubscriberError) -> Failure {
    use subscribers::SubscriberError as E;
    match e {
        E::Sqlite(e) => Failure::sqlite("the subscriber change", e),
        E::Db(e) => Failure::db("the subscriber change", e),
        E::NotFound(_) => Failure::new(StatusCode::NOT_FOUND, e.to_string()),
        E::Duplicate(_) => Failure::new(StatusCode::CONFLICT, e.to_string()),
        e => Failure::new(StatusCode::BAD_REQUEST, e.to_string()),
    }
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
.problems li{color:#a00}code{background:#f3f3f3;padding:0 .2em;overflow-wrap:anywhere}\
td.num,th.num{text-align:right}form.inline{display:inline;margin:0 .3em 0 0}\
button{font:inherit;font-size:.9em;padding:.1em .6em;margin:.1em 0}\
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(15em,1fr));gap:.6em 1.2em;margin:.4em 0 1em}\
figure{margin:0;display:flex;flex-direction:column;justify-content:flex-end}figcaption{font-size:.85em;color:#555}svg{width:100%;height:4em;display:block;background:#fafafa}\
svg .axis{stroke:#bbb;stroke-width:.5}.c-runs{fill:#4a7ab5}.c-items{fill:#5a9a5a}.c-fail{fill:#c33}\
@media (max-width:40em){table{display:block;overflow-x:auto}td,th{padding-right:.5em}}";

/// A whole page around `body`; `refresh` reloads it every N seconds.
pub fn page(title: &str, refresh: Option<u32>, body: &str) -> String {
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

/// The sign-in form of repository `name` (a GET of it changes nothing),
/// with `message` above it (why the last try failed).
pub fn login_page(name: &str, message: Option<&str>) -> String {
    let n = esc(name);
    let msg = message
        .map(|m| format!("<p class=\"bad\">{}</p>\n", esc(m)))
        .unwrap_or_default();
    page(
        &format!("{name} — sign in"),
        None,
        &format!(
            "<h1>{n}</h1>\n<p>This repository's status and actions need its token \
(<code>backoffice token</code> makes one). Enter it once: this browser gets a session \
cookie for this repository.</p>\n{msg}\
<form method=\"post\" action=\"/r/{n}/login\"><label>Token \
<input type=\"password\" name=\"token\" autocomplete=\"current-password\" required size=\"40\"></label> \
<button type=\"submit\">Sign in</button></form>\n<p><a href=\"/\">All repositories</a></p>"
        ),
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
