//! `PUT /replica/NAME`: a copy of a repository pushed by a peer's
//! `replicate` task, taken only by a server started with `--replica-dir`.
//!
//! The body streams to a temporary file in that folder (never into
//! memory), within the size limit and with the body timeout between
//! chunks; then `PRAGMA quick_check` must say `ok` before the copy replaces
//! `DIR/NAME.db` by the same fsync-and-rename as a local replica, keeping
//! older generations. A damaged or partial upload is refused (422) and
//! removed, so the replica there is always a whole, checked database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::app::{App, ReplicaSink};
use super::respond::{Failure, bearer, json_type, unauthorized};
use super::site;

static UPLOADS: AtomicU64 = AtomicU64::new(0);

/// `GET /replica/NAME`: 204 if this server takes replicas and the token is
/// right. A peer asks before it sends a copy, because a server refusing a
/// large upload closes the connection under the sender, who then sees a
/// broken pipe rather than the reason.
pub async fn probe(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match admit(&app, &name, &headers) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(f) => f.into_response(),
    }
}

/// The sink, if this request may deliver a replica named `name`.
fn admit<'a>(app: &'a App, name: &str, headers: &HeaderMap) -> Result<&'a ReplicaSink, Failure> {
    let Some(sink) = app.replicas.as_ref() else {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "this server takes no replicas (start it with --replica-dir)",
        ));
    };
    let ok = bearer(headers).is_some_and(|t| backoffice::token::matches(&sink.token, t));
    if !ok {
        return Err(unauthorized("a replica needs this server's replica token"));
    }
    if !site::valid_name(name) {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "a replica name is 1-100 letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(sink)
}

/// Takes one pushed copy.
pub async fn receive(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match take(app, name, headers, body).await {
        Ok(r) => r,
        Err(f) => f.into_response(),
    }
}

async fn take(
    app: Arc<App>,
    name: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    let sink = admit(&app, &name, &headers)?;
    let tmp = sink.dir.join(format!(
        ".{name}.db.upload-{}-{}",
        std::process::id(),
        UPLOADS.fetch_add(1, Ordering::Relaxed)
    ));
    let received = receive_to(&app, &tmp, body, sink.max_bytes).await;
    let bytes = match received {
        Ok(n) => n,
        Err(f) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(f);
        }
    };
    let target = sink.dir.join(format!("{name}.db"));
    let keep = sink.keep;
    let tmp2 = tmp.clone();
    let installed = tokio::task::spawn_blocking(move || {
        let check = rusqlite::Connection::open_with_flags(
            &tmp2,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|c| c.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0)));
        match check {
            Ok(s) if s == "ok" => {}
            Ok(s) => return Err(format!("the copy failed its check: {s}")),
            Err(e) => return Err(format!("the copy is not a readable database: {e}")),
        }
        backoffice_tasks::replicate::install_replica(&tmp2, &target, keep).map_err(|e| {
            tracing::error!("installing a replica: {e}");
            "the copy could not be stored; the server log says why".to_owned()
        })
    })
    .await;
    match installed {
        Ok(Ok(_)) => {
            tracing::info!(replica = %name, bytes, "took a replica");
            let body = serde_json::json!({ "replica": name, "bytes": bytes }).to_string();
            Ok((StatusCode::CREATED, json_type(), body).into_response())
        }
        Ok(Err(msg)) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(Failure::new(StatusCode::UNPROCESSABLE_ENTITY, msg))
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(Failure::internal("checking a replica", e))
        }
    }
}

/// Streams the body into `tmp`; returns its size.
async fn receive_to(
    app: &App,
    tmp: &std::path::Path,
    mut body: Body,
    max: u64,
) -> Result<u64, Failure> {
    let mut file = tokio::fs::File::create(tmp)
        .await
        .map_err(|e| Failure::internal("creating a replica upload", e))?;
    let mut n: u64 = 0;
    loop {
        let frame = tokio::time::timeout(app.limits.body_timeout, body.frame()).await;
        let frame = match frame {
            Err(_) => {
                return Err(Failure::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "the copy stopped arriving",
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    "the copy was cut off",
                ));
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            n += data.len() as u64;
            if n > max {
                return Err(Failure::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the copy is larger than {max} bytes"),
                ));
            }
            file.write_all(&data)
                .await
                .map_err(|e| Failure::internal("writing a replica upload", e))?;
        }
    }
    file.flush()
        .await
        .map_err(|e| Failure::internal("writing a replica upload", e))?;
    Ok(n)
}
