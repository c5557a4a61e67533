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
//! * `site.rs`: repositories by name (one file, or a `--repolist`
//!   directory), a small connection pool per repository, and which
//!   repository a request path names.
//! * `app.rs`: [`App`], what every handler shares — the site, the engine,
//!   the [`Limits`], the replica sink, per-process counters and the
//!   write gate.
//! * `respond.rs`: the shared response helpers — the error reply
//!   (`Failure`: JSON or an HTML page, busy as 503, internal errors logged
//!   and answered without details), the bearer-token checks, HTML escaping
//!   and the page shell, content types, JSON bodies, and running a
//!   handler's SQLite work on a blocking thread.
//! * The route modules, one per kind of reply:
//!   * `pages.rs`: the HTML pages (index, status, unsubscribe).
//!   * `api.rs`: the JSON API (status, events, subscribers).
//!   * `metrics.rs`: the Prometheus text.
//!   * `replica.rs`: copies pushed by peers (`PUT /replica/NAME`).
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
mod metrics;
mod pages;
mod replica;
mod respond;
pub mod router;
pub mod serve;
pub mod site;

pub use app::{App, Limits, READ_CHECK_EVERY, ReplicaSink};
pub use site::{Site, repo_in_path};

#[cfg(test)]
mod tests {
    /// The files of the web front, each with its layer in `# Layout`: a
    /// file may use only files of a lower layer.
    const LAYERS: &[(&str, u8, &str)] = &[
        ("site", 0, include_str!("site.rs")),
        ("app", 1, include_str!("app.rs")),
        ("respond", 2, include_str!("respond.rs")),
        ("pages", 3, include_str!("pages.rs")),
        ("api", 3, include_str!("api.rs")),
        ("metrics", 3, include_str!("metrics.rs")),
        ("replica", 3, include_str!("replica.rs")),
        ("router", 4, include_str!("router.rs")),
        ("serve", 5, include_str!("serve.rs")),
        ("cgi", 5, include_str!("cgi.rs")),
    ];

    /// The sibling names one file's code reaches through `super::` or
    /// `crate::web::` (comments skipped), groups (`super::{a, b}`) included.
    fn siblings(src: &str) -> Vec<String> {
        let code: String = src
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let ident = |s: &str| -> String {
            s.trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        let mut names = Vec::new();
        for prefix in ["super::", "crate::web::"] {
            for (at, _) in code.match_indices(prefix) {
                let rest = &code[at + prefix.len()..];
                match rest.strip_prefix('{') {
                    Some(group) => {
                        let group = &group[..group.find('}').unwrap_or(group.len())];
                        names.extend(group.split(',').map(ident).filter(|n| !n.is_empty()));
                    }
                    None => names.push(ident(rest)),
                }
            }
        }
        names
    }

    /// The one-way rule of `# Layout`: no file uses a file of its own or a
    /// higher layer (so no route imports the router or another route), and
    /// none goes round it through a re-export of `mod.rs`.
    #[test]
    fn imports_point_one_way() {
        let mut wrong = Vec::new();
        for (file, layer, src) in LAYERS {
            for name in siblings(src) {
                match LAYERS.iter().find(|(f, _, _)| *f == name) {
                    Some((_, l, _)) if l < layer => {}
                    Some(_) => wrong.push(format!("{file}.rs uses {name}.rs, not below it")),
                    None => wrong.push(format!(
                        "{file}.rs uses `{name}` of web/mod.rs; name its file instead"
                    )),
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// Every file of the web front has its layer in [`LAYERS`], so a new
    /// file cannot escape the rule.
    #[test]
    fn every_file_has_a_layer() {
        let declared: Vec<&str> = include_str!("mod.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub mod ").or(l.strip_prefix("mod ")))
            .filter_map(|l| l.strip_suffix(';'))
            .collect();
        assert!(declared.len() >= LAYERS.len(), "{declared:?}");
        for m in declared {
            assert!(
                LAYERS.iter().any(|(f, _, _)| *f == m),
                "web/{m}.rs has no layer in LAYERS (and no place in # Layout)"
            );
        }
    }
}
