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
//! | `GET`, `POST /r/NAME/subscribe` | self-service sign-up (`email-signup`) |
//! | `GET`, `POST /r/NAME/confirm/CODE/TOKEN` | the emailed confirmation link |
//! | `GET`, `POST /r/NAME/alerts/CODE` | a subscriber changes what they get, or leaves |
//! | `GET`, `POST /r/NAME/login` | the token form; a session cookie |
//! | `POST /r/NAME/logout` | ends the session |
//! | `POST /r/NAME/actions/ACTION` | an operator's action (session and CSRF token, or bearer token) |
//! | `GET /metrics` | Prometheus text for every repository the scraper may see |
//! | `GET`, `PUT /replica/NAME` | ask whether a copy would be taken; a copy pushed by a peer (`serve --replica-dir`; its own token) |
//!
//! This file is the table and what applies to every route (the body
//! limits, the security headers, the 404); the handlers are in the route
//! modules (`pages`, `api`, `metrics`, `replica`), and what they share —
//! error replies, auth, escaping — in `respond.rs`. Nothing below imports
//! this file.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};

use super::app::App;
use super::respond::Failure;
use super::{api, metrics, operate, pages, replica, signup};

/// The router, with request limits and security headers. The after-request
/// check is not in here: each front end runs it after its reply is sent.
pub fn router(app: Arc<App>) -> Router {
    // Replicas stream to disk, so they are outside the buffered-body limit.
    let replicas =
        Router::new().route("/replica/{name}", put(replica::receive).get(replica::probe));
    let main = Router::new()
        .route("/", get(pages::get_index))
        .route("/metrics", get(metrics::get_metrics))
        .route("/r/{name}", get(pages::get_status))
        .route("/r/{name}/", get(pages::get_status))
        .route("/r/{name}/status.json", get(api::status_json))
        .route("/r/{name}/events", post(api::post_event))
        .route(
            "/r/{name}/subscribers",
            get(api::list_subscribers)
                .post(api::add_subscriber)
                .delete(api::remove_subscriber_query),
        )
        .route(
            "/r/{name}/subscribers/{who}",
            delete(api::remove_subscriber),
        )
        .route(
            "/r/{name}/login",
            get(operate::get_login).post(operate::post_login),
        )
        .route("/r/{name}/logout", post(operate::post_logout))
        .route("/r/{name}/actions/{action}", post(operate::post_action))
        .route(
            "/r/{name}/unsubscribe/{code}",
            get(pages::get_unsubscribe).post(pages::post_unsubscribe),
        )
        .route(
            "/r/{name}/subscribe",
            get(signup::get_subscribe).post(signup::post_subscribe),
        )
        .route(
            "/r/{name}/confirm/{code}/{token}",
            get(signup::get_confirm).post(signup::post_confirm),
        )
        .route(
            "/r/{name}/alerts/{code}",
            get(signup::get_alerts).post(signup::post_alerts),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), read_body));
    replicas
        .merge(main)
        .layer(middleware::from_fn(security_headers))
        .with_state(app)
}

async fn not_found(req: Request) -> Response {
    let f = Failure::new(StatusCode::NOT_FOUND, "no such page");
    if req.uri().path().ends_with(".json") {
        f.into_response()
    } else {
        f.html().into_response()
    }
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
