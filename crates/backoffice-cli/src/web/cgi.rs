//! `backoffice cgi`: one request under a CGI host (RFC 3875), through the
//! same router as `serve`.
//!
//! The request comes from the environment (`REQUEST_METHOD`, `PATH_INFO`,
//! `QUERY_STRING`, `CONTENT_TYPE`, `CONTENT_LENGTH`, `HTTP_*`) and stdin;
//! the reply goes to stdout with a `Status:` line. Then — with stdout
//! closed, so the web server has the whole reply — the after-request check
//! runs and may start a detached worker, and the process exits. The worker
//! is a new session with its stdio on /dev/null and every other inherited
//! descriptor closed, so it never holds the web server's connection open;
//! init reaps it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tower::ServiceExt;

use super::app::App;
use super::clients::ClientIp;
use super::router;
use super::site::repo_in_path;

/// A CGI request, as the environment describes it.
#[derive(Debug, Default)]
pub struct CgiRequest {
    /// `REQUEST_METHOD`.
    pub method: String,
    /// `PATH_INFO` (the route).
    pub path: String,
    /// `QUERY_STRING`.
    pub query: String,
    /// `CONTENT_LENGTH`, if any.
    pub content_length: Option<usize>,
    /// Headers: `CONTENT_TYPE` and every `HTTP_*` variable.
    pub headers: Vec<(String, String)>,
    /// `REMOTE_ADDR`, the client's address, if the web server gave a valid one.
    pub remote_addr: Option<std::net::IpAddr>,
}

impl CgiRequest {
    /// Reads the request from environment variables.
    pub fn from_env(env: &HashMap<String, String>) -> Result<CgiRequest> {
        let method = env
            .get("REQUEST_METHOD")
            .cloned()
            .context("REQUEST_METHOD is not set: `backoffice cgi` is run by a web server (CGI)")?;
        let mut path = env.get("PATH_INFO").cloned().unwrap_or_default();
        if path.is_empty() {
            path = "/".into();
        }
        let content_length = match env.get("CONTENT_LENGTH").map(|s| s.trim()) {
            None | Some("") => None,
            Some(s) => Some(
                s.parse()
                    .with_context(|| format!("CONTENT_LENGTH is not a number: {s:?}"))?,
            ),
        };
        let mut headers = Vec::new();
        if let Some(t) = env.get("CONTENT_TYPE").filter(|t| !t.is_empty()) {
            headers.push(("content-type".into(), t.clone()));
        }
        for (k, v) in env {
            if let Some(h) = k.strip_prefix("HTTP_") {
                // HTTP_X_FORWARDED_FOR → x-forwarded-for
                headers.push((h.replace('_', "-").to_ascii_lowercase(), v.clone()));
            }
        }
        Ok(CgiRequest {
            method,
            path,
            query: env.get("QUERY_STRING").cloned().unwrap_or_default(),
            content_length,
            headers,
            remote_addr: env.get("REMOTE_ADDR").and_then(|a| a.trim().parse().ok()),
        })
    }

    fn to_http(&self, body: Vec<u8>) -> Result<Request<Body>, String> {
        let method = Method::from_bytes(self.method.as_bytes())
            .map_err(|_| format!("bad request method {:?}", self.method))?;
        let uri = if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        };
        let mut req = Request::builder()
            .method(method)
            .uri(&uri)
            .body(Body::from(body))
            .map_err(|_| "bad request path".to_owned())?;
        req.extensions_mut().insert(ClientIp(self.remote_addr));
        for (k, v) in &self.headers {
            // Headers the web server passes that HTTP cannot carry are dropped.
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v)) {
                req.headers_mut().append(k, v);
            }
        }
        Ok(req)
    }
}

/// Answers one request: reads it, writes the reply to `out`, and returns
/// the repository whose check should run afterwards (a 2xx reply under
/// `/r/NAME`).
pub fn respond(
    app: Arc<App>,
    req: &CgiRequest,
    input: &mut impl Read,
    out: &mut impl Write,
) -> Result<Option<String>> {
    let max = app.limits.max_body;
    let reply = match req.content_length {
        Some(n) if n > max => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {max} bytes"),
        )),
        n => {
            let mut body = vec![0u8; n.unwrap_or(0)];
            match input.read_exact(&mut body) {
                Ok(()) => req.to_http(body).map_err(|e| (StatusCode::BAD_REQUEST, e)),
                Err(e) => Err((
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {e}"),
                )),
            }
        }
    };
    let resp = match reply {
        Ok(http) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async {
                let resp = router::router(app.clone()).oneshot(http).await;
                let resp = match resp {
                    Ok(r) => r,
                    Err(e) => match e {},
                };
                let (parts, body) = resp.into_parts();
                let bytes = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap_or_default();
                Response::from_parts(parts, bytes.to_vec())
            })
        }
        Err((status, msg)) => {
            let body = serde_json::json!({ "error": msg }).to_string().into_bytes();
            let mut r = Response::new(body);
            *r.status_mut() = status;
            r.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
    };
    write_reply(out, &resp)?;
    let touched = repo_in_path(&req.path)
        .filter(|_| resp.status().is_success())
        .map(str::to_owned);
    Ok(touched)
}

/// Writes a reply in CGI's form: a `Status:` line, the headers, a blank
/// line, the body.
fn write_reply(out: &mut impl Write, resp: &Response<Vec<u8>>) -> Result<()> {
    let mut head = format!(
        "Status: {} {}\r\n",
        resp.status().as_u16(),
        resp.status().canonical_reason().unwrap_or("")
    );
    for (k, v) in resp.headers() {
        if let Ok(v) = v.to_str() {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    if !resp
        .headers()
        .contains_key(axum::http::header::CONTENT_LENGTH)
    {
        head.push_str(&format!("Content-Length: {}\r\n", resp.body().len()));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(resp.body())?;
    out.flush()?;
    Ok(())
}

/// Closes stdin and stdout (points them at /dev/null), so the web server
/// sees the end of the reply before any check or worker start.
pub fn close_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
    }
}
