//! The web front: `backoffice serve` and `backoffice cgi`.
//!
//! In Fossil, web requests are what drive the backoffice: after each reply
//! the server runs a cheap check and perhaps starts a worker. This module
//! plays that part for our repositories. One [`router`] answers every route
//! — status pages, the JSON API, the unsubscribe target, Prometheus metrics
//! — and two front ends feed it:
//!
//! * [`serve`]: a long-running HTTP/1 server (hyper under our own accept
//!   loop, so the header, idle and body timeouts and the connection limit
//!   are ours). After each successful reply for a repository it runs the
//!   after-request check on a blocking thread, off the request's path, and
//!   reaps every worker it starts.
//! * [`cgi`]: one request from the environment and stdin (RFC 3875). After
//!   the reply is written and stdout closed, it runs the same check, starts
//!   a detached worker if one is needed, and exits; the worker holds none of
//!   the web server's descriptors.
//!
//! # Layout
//!
//! Each file is one idea, listed from the bottom up:
//!
//! * `store.rs`: one open repository on either store — an SQLite file
//!   or a PostgreSQL schema — and what the routes ask of it (the status,
//!   events, subscribers, the token), each call the store's own function.
//! * `clients.rs`: who sent a request (`ClientIp`, put on it by the
//!   front end) and a bounded in-memory table of counters per client
//!   (the sign-up rate limits of `serve`).
//! * `site.rs`: repositories by name (one file, a `--repolist`
//!   directory, one PostgreSQL schema or every repository schema of a
//!   database), a small connection pool, and which repository a request
//!   path names.
//! * `app.rs`: [`App`], what every handler shares — the site, the engine,
//!   the [`Limits`], the replica sink, per-process counters, the write
//!   gate, and the kept answers of the check on PostgreSQL.
//! * `respond.rs`: the shared response helpers — the error reply
//!   (`Failure`: JSON or an HTML page, busy as 503, internal errors logged
//!   and answered without details), the bearer-token checks, HTML escaping
//!   and the page shell, content types, JSON bodies, and running a
//!   handler's SQLite work on a blocking thread.
//! * `guard.rs`, beside `respond.rs`: the forms' guards — cross-site
//!   request forgery tokens bound to a cookie, the same-origin check,
//!   reading a form body.
//! * `session.rs`: who may see and do what — the operator's session
//!   (the token entered once in a form gives an `HttpOnly;
//!   SameSite=Strict` cookie, kept server-side in the repository), its
//!   CSRF token, the bearer token, and the redacted public summary
//!   (`web-public-summary`).
//! * `history.rs`: the run history as inline SVG charts (no script).
//! * The route modules, one per kind of reply:
//!   * `pages.rs`: the HTML pages (index, status, unsubscribe).
//!   * `api.rs`: the JSON API (status, events, subscribers).
//!   * `metrics.rs`: the Prometheus text.
//!   * `replica.rs`: copies pushed by peers (`PUT /replica/NAME`).
//!   * `signup.rs`: self-service sign-up, the confirmation link, a
//!     subscriber's own page (`/subscribe`, `/confirm`, `/alerts`).
//!   * `operate.rs`: sign in and out, and the operator's actions.
//! * `router.rs`: the route table, request-body limits, security headers,
//!   the 404.
//! * `serve.rs`, `cgi.rs`: the two front ends, each feeding the router.
//!
//! The imports point one way, down that list: a file uses only files above
//! it. The route modules use `respond.rs` and never each other or the
//! router; only the router names the routes, and only the front ends use
//! the router. A helper two routes need goes into `respond.rs`, never into
//! a route module or the router, so no circle can come back. The tests
//! at the end of this file hold every file to its place in this list.

mod api;
mod app;
pub mod cgi;
pub mod clients;
mod guard;
mod history;
mod metrics;
mod operate;
mod pages;
mod replica;
mod respond;
pub mod router;
pub mod serve;
mod session;
mod signup;
pub mod site;
mod store;

pub use app::{App, Limits, READ_CHECK_EVERY, ReplicaSink};
pub use site::{Site, repo_in_path};
