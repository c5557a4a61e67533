//! Self-service sign-up (`email-signup`): the pages `/r/NAME/subscribe`,
//! `/r/NAME/confirm/CODE/TOKEN` and `/r/NAME/alerts/CODE` over real HTTP
//! against `backoffice serve` (and `backoffice cgi`), with the confirmation
//! mail read back from the `dir` method's `.eml` files; and the whole walk
//! in a real headless Chromium driven by Playwright (skipped with a message
//! when Chromium, node or playwright-core are missing, unless
//! `BACKOFFICE_REQUIRE_EXTERNAL=1`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{Cmd, Env, have, wait_child, wait_until};
use crate::web::{Reply, Server, Site, get, request};

/// The test site with sign-up turned on.
fn signup_site(env: &Env) -> Site {
    let site = Site::new(env, "app");
    site.app.bo(&["setting", "email-signup", "on"]);
    site
}

/// The `bo_csrf` cookie a form page set, as `name=value`.
fn cookie_of(r: &Reply) -> String {
    let v = r
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie: {r:?}"));
    assert!(
        v.contains("HttpOnly") && v.contains("SameSite=Strict") && v.contains("Path=/r/app"),
        "{v}"
    );
    v.split(';').next().unwrap().to_owned()
}

/// The hidden `csrf` field of a form page.
fn token_of(r: &Reply) -> String {
    let at = r
        .body
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field: {}", r.body));
    let rest = &r.body[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// A form page's cookie and token.
fn form(addr: &str, path: &str) -> (String, String) {
    let r = get(addr, path);
    assert_eq!(r.status, 200, "{r:?}");
    (cookie_of(&r), token_of(&r))
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn post_form(addr: &str, path: &str, cookie: Option<&str>, fields: &[(&str, &str)]) -> Reply {
    let body = fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(c) = cookie {
        h.push(("Cookie", c));
    }
    request(addr, "POST", path, &h, &body)
}

/// Signs `address` up through the form; the reply.
fn sign_up(addr: &str, address: &str, kinds: &str, mode: &str) -> Reply {
    let (cookie, token) = form(addr, "/r/app/subscribe");
    post_form(
        addr,
        "/r/app/subscribe",
        Some(&cookie),
        &[
            ("csrf", &token),
            ("address", address),
            ("kinds", kinds),
            ("mode", mode),
        ],
    )
}

fn count(site: &Site, sql: &str) -> i64 {
    site.sql::<i64>(sql)
}

/// Decodes a quoted-printable body (soft breaks, `=XX`).
fn unqp(s: &str) -> String {
    let s = s.replace("=\r\n", "").replace("=\n", "");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' && i + 2 < b.len() {
            if let Ok(x) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `.eml` files in `dir` sent to `to`, oldest first, decoded.
fn mails_to(dir: &Path, to: &str) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|x| x == "eml"));
    files.sort();
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| unqp(&t))
        .filter(|t| t.contains(&format!("To: {to}\r\n")))
        .collect()
}

/// Runs the worker until `dir` holds `n` messages to `to`; returns them.
fn await_mails(site: &Site, to: &str, n: usize) -> Vec<String> {
    let ok = wait_until(Duration::from_secs(30), || {
        if mails_to(&site.mail, to).len() >= n {
            return true;
        }
        // The server's own after-request check may have started one
        // already; a second run waits for its lease or finds nothing due.
        site.app.bo(&["run"]);
        mails_to(&site.mail, to).len() >= n
    });
    assert!(
        ok,
        "{n} messages to {to} did not arrive: {:?}",
        mails_to(&site.mail, to)
    );
    mails_to(&site.mail, to)
}

/// The confirmation link in a message, whole.
fn link_in(mail: &str) -> String {
    let at = mail
        .find("http://")
        .unwrap_or_else(|| panic!("no link in {mail}"));
    let url = mail[at..].split_whitespace().next().unwrap().to_owned();
    assert!(url.contains("/confirm/"), "{url}");
    url
}

/// The path part of a link.
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest[rest.find('/').unwrap()..].to_owned()
}

#[test]
fn sign_up_is_off_by_default_and_every_page_answers_404() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    let srv = Server::start(&site.app.path, &[], &env);
    let code: String = site.sql("SELECT code FROM bo_subscriber WHERE address = 'ann@example.org'");
    for (m, p) in [
        ("GET", "/r/app/subscribe".to_owned()),
        ("POST", "/r/app/subscribe".to_owned()),
        ("GET", format!("/r/app/alerts/{code}")),
        ("POST", format!("/r/app/alerts/{code}")),
        ("GET", format!("/r/app/confirm/{code}/1-00")),
        ("POST", format!("/r/app/confirm/{code}/1-00")),
    ] {
        let r = request(
            &srv.addr,
            m,
            &p,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            "address=eve%40example.org&action=unsubscribe",
        );
        assert_eq!(r.status, 404, "{m} {p}: {r:?}");
        assert!(r.body.contains("sign-up is off"), "{}", r.body);
    }
    assert_eq!(count(&site, "SELECT count(*) FROM bo_subscriber"), 2);
    assert_eq!(
        count(&site, "SELECT count(*) FROM bo_subscriber WHERE donotcall"),
        0
    );
    // Turned on: the form is there.
    site.app.bo(&["setting", "email-signup", "on"]);
    assert_eq!(get(&srv.addr, "/r/app/subscribe").status, 200);
}

#[test]
fn forged_forms_get_403_and_write_nothing() {
    let env = Env::new();
    let site = signup_site(&env);
    let srv = Server::start(&site.app.path, &[], &env);
    let (cookie, token) = form(&srv.addr, "/r/app/subscribe");
    let (other_cookie, _) = form(&srv.addr, "/r/app/subscribe");
    assert_ne!(cookie, other_cookie, "each browser its own nonce");
    let fields = |t: &str| {
        vec![
            ("csrf", t.to_owned()),
            ("address", "eve@example.org".to_owned()),
        ]
    };
    let (t0, mac) = token.split_once('.').unwrap();
    let tampered = format!("{t0}.{}", mac.replace(|c: char| c != '0', "0"));
    let post = |cookie: Option<&str>, t: &str, extra: &[(&str, &str)]| {
        let f = fields(t);
        let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
        if let Some(c) = cookie {
            h.push(("Cookie", c));
        }
        h.extend_from_slice(extra);
        let body = f
            .iter()
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        request(&srv.addr, "POST", "/r/app/subscribe", &h, &body)
    };
    for (what, r) in [
        ("no cookie, no token", post(None, "", &[])),
        ("a cookie, no token", post(Some(&cookie), "", &[])),
        ("a token, no cookie", post(None, &token, &[])),
        (
            "another browser's cookie",
            post(Some(&other_cookie), &token, &[]),
        ),
        ("a tampered token", post(Some(&cookie), &tampered, &[])),
        (
            "another site's Origin",
            post(Some(&cookie), &token, &[("Origin", "https://evil.example")]),
        ),
        (
            "another site's Referer",
            post(
                Some(&cookie),
                &token,
                &[("Referer", "https://evil.example/page")],
            ),
        ),
        (
            "Sec-Fetch-Site: cross-site",
            post(Some(&cookie), &token, &[("Sec-Fetch-Site", "cross-site")]),
        ),
    ] {
        assert_eq!(r.status, 403, "{what}: {r:?}");
    }
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM bo_subscriber WHERE address = 'eve@example.org'"
        ),
        0
    );
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM bo_outbox WHERE kind = 'confirm'"
        ),
        0
    );
    // The same form, genuine (and from our own origin): accepted.
    let origin = format!("http://{}", srv.addr);
    let r = post(Some(&cookie), &token, &[("Origin", &origin)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM bo_subscriber WHERE address = 'eve@example.org' AND NOT verified"
        ),
        1
    );
    // The subscriber's page is guarded the same way.
    let code: String = site.sql("SELECT code FROM bo_subscriber WHERE address = 'ann@example.org'");
    let r = post_form(
        &srv.addr,
        &format!("/r/app/alerts/{code}"),
        None,
        &[("action", "unsubscribe")],
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        count(
            &site,
            "SELECT donotcall FROM bo_subscriber WHERE address = 'ann@example.org'"
        ),
        0
    );
}

#[test]
fn sign_ups_are_limited_per_client_and_per_repository() {
    let env = Env::new();
    let site = signup_site(&env);
    site.app.bo(&["setting", "email-signup-per-client", "2"]);
    let srv = Server::start(&site.app.path, &[], &env);
    for i in 0..2 {
        let r = sign_up(&srv.addr, &format!("u{i}@example.org"), "*", "immediate");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = sign_up(&srv.addr, "u2@example.org", "*", "immediate");
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM bo_subscriber WHERE address = 'u2@example.org'"
        ),
        0
    );
    drop(srv);

    // Under CGI the counts are kept in the repository: per client
    // (REMOTE_ADDR), and for the repository as a whole.
    site.app
        .bo(&["setting", "email-signup-per-repository", "4"]);
    let from = |ip: &str, address: &str| {
        let (page, _) = cgi(&site.app.path, "GET", "/r/app/subscribe", &[], "", ip);
        let cookie = page
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .unwrap_or_else(|| panic!("no cookie: {page}"))
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let token = token_of(&Reply {
            status: 200,
            head: String::new(),
            body: page.clone(),
        });
        let body = format!("csrf={}&address={}", enc(&token), enc(address));
        let (out, _) = cgi(
            &site.app.path,
            "POST",
            "/r/app/subscribe",
            &[
                ("HTTP_COOKIE", &cookie),
                ("CONTENT_TYPE", "application/x-www-form-urlencoded"),
            ],
            &body,
            ip,
        );
        out.lines().next().unwrap_or("").to_owned()
    };
    assert_eq!(from("192.0.2.1", "c1@example.org"), "Status: 200 OK");
    assert_eq!(from("192.0.2.1", "c2@example.org"), "Status: 200 OK");
    assert_eq!(
        from("192.0.2.1", "c3@example.org"),
        "Status: 429 Too Many Requests"
    );
    assert_eq!(from("192.0.2.2", "c4@example.org"), "Status: 200 OK");
    assert_eq!(from("192.0.2.3", "c5@example.org"), "Status: 200 OK");
    // The repository's four for this hour are taken, whoever asks.
    assert_eq!(
        from("192.0.2.4", "c6@example.org"),
        "Status: 429 Too Many Requests"
    );
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM bo_subscriber WHERE address IN ('c3@example.org', 'c6@example.org')"
        ),
        0
    );
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM bo_subscriber WHERE address LIKE 'c_@example.org'"
        ),
        4
    );
}

/// Runs `backoffice cgi` as a CGI host would, from `remote` (REMOTE_ADDR).
fn cgi(
    repo: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    remote: &str,
) -> (String, ()) {
    let mut cmd = Cmd::backoffice()
        .arg("cgi")
        .env("BACKOFFICE_REPO", repo)
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", "")
        .env("REMOTE_ADDR", remote)
        .env("HTTP_HOST", "127.0.0.1")
        .env("CONTENT_LENGTH", body.len().to_string());
    for (k, v) in headers {
        cmd = cmd.env(k, v);
    }
    let mut child = cmd.spawn_with(Stdio::piped(), Stdio::inherit());
    let _ = child.stdin.take().unwrap().write_all(body.as_bytes());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    wait_child(&mut child, Duration::from_secs(20), "backoffice cgi");
    (out, ())
}

#[test]
fn signing_up_again_reveals_nothing_and_changes_no_active_subscriber() {
    let env = Env::new();
    let site = signup_site(&env);
    let srv = Server::start(&site.app.path, &[], &env);
    // ann is an active subscriber of every kind; zed is new.
    let known = sign_up(&srv.addr, "ann@example.org", "wiki", "digest");
    let unknown = sign_up(&srv.addr, "zed@example.org", "wiki", "digest");
    assert_eq!(known.status, unknown.status);
    assert_eq!(
        known.body.replace("ann@example.org", "X"),
        unknown.body.replace("zed@example.org", "X"),
        "the page must not say whether the address was known"
    );
    let heads = |r: &Reply| {
        let mut h: Vec<String> = r
            .head
            .lines()
            .skip(1)
            .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
            .map(|l| l.split(':').next().unwrap().to_ascii_lowercase())
            .collect();
        h.sort();
        h
    };
    assert_eq!(heads(&known), heads(&unknown));
    // Both get a link; ann's choices are hers to change, not a stranger's.
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM bo_outbox WHERE kind = 'confirm'"
        ),
        2
    );
    assert_eq!(
        site.sql::<String>(
            "SELECT kinds || ',' || digest || ',' || verified FROM bo_subscriber WHERE address = 'ann@example.org'"
        ),
        "*,0,1"
    );
    // An address not yet confirmed takes what is asked last, and a new link.
    let again = sign_up(&srv.addr, "zed@example.org", "checkin", "immediate");
    assert_eq!(again.status, 200);
    assert_eq!(
        site.sql::<String>(
            "SELECT kinds || ',' || digest || ',' || verified FROM bo_subscriber WHERE address = 'zed@example.org'"
        ),
        "checkin,0,0"
    );
    // A message with a link each time (made in the same second, the same
    // link: it is the code and the expiry, signed).
    let mails = await_mails(&site, "zed@example.org", 2);
    for m in &mails {
        assert!(link_in(m).contains(&format!(
            "/confirm/{}/",
            site.sql::<String>("SELECT code FROM bo_subscriber WHERE address = 'zed@example.org'")
        )));
    }
}

#[test]
fn expired_or_forged_links_are_refused_and_only_confirmed_addresses_get_alerts() {
    let env = Env::new();
    let site = signup_site(&env);
    let srv = Server::start(&site.app.path, &[], &env);
    assert_eq!(
        sign_up(&srv.addr, "new@example.org", "*", "immediate").status,
        200
    );
    // An event before confirming: no alert to the new address.
    site.app.bo(&[
        "publish",
        "--kind",
        "checkin",
        "--title",
        "Before confirming",
    ]);
    let mails = await_mails(&site, "new@example.org", 1);
    assert!(mails[0].contains("Subject: [app] Please confirm your subscription"));
    assert!(!mails[0].contains("List-Unsubscribe"), "not a list message");
    await_mails(&site, "ann@example.org", 1);
    assert_eq!(mails_to(&site.mail, "new@example.org").len(), 1);
    let link = path_of(&link_in(&mails[0]));

    // A GET (a mail scanner) changes nothing.
    let page = get(&srv.addr, &link);
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("Confirm"));
    assert_eq!(
        count(
            &site,
            "SELECT verified FROM bo_subscriber WHERE address = 'new@example.org'"
        ),
        0
    );
    // The same link made to expire a second ago, with the repository's own
    // key: refused as expired; with its time pushed on: refused as forged.
    let key: String = site.sql("SELECT secret FROM bo_signup_key");
    let code: String = site.sql("SELECT code FROM bo_subscriber WHERE address = 'new@example.org'");
    let past = backoffice_tasks::notify::signup::link_token(&key, &code, crate::harness::now() - 1);
    let expired = format!("/r/app/confirm/{code}/{past}");
    for m in ["GET", "POST"] {
        let r = request(&srv.addr, m, &expired, &[], "");
        assert_eq!(r.status, 410, "{m}: {r:?}");
        assert!(r.body.contains("expired"), "{}", r.body);
    }
    let token = link.rsplit('/').next().unwrap();
    let (exp, mac) = token.split_once('-').unwrap();
    let later: i64 = exp.parse::<i64>().unwrap() + 3600;
    let forged = format!("/r/app/confirm/{code}/{later}-{mac}");
    assert_eq!(request(&srv.addr, "POST", &forged, &[], "").status, 404);
    assert_eq!(
        count(
            &site,
            "SELECT verified FROM bo_subscriber WHERE address = 'new@example.org'"
        ),
        0
    );

    // The genuine link, posted: confirmed, and the next event reaches it.
    let r = request(&srv.addr, "POST", &link, &[], "");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains(&format!("../../alerts/{code}")),
        "{}",
        r.body
    );
    assert_eq!(
        count(
            &site,
            "SELECT verified AND NOT donotcall FROM bo_subscriber WHERE address = 'new@example.org'"
        ),
        1
    );
    site.app.bo(&[
        "publish",
        "--kind",
        "checkin",
        "--title",
        "After confirming",
    ]);
    let mails = await_mails(&site, "new@example.org", 2);
    assert!(mails[1].contains("After confirming"), "{}", mails[1]);
    assert!(
        !mails.iter().any(|m| m.contains("Before confirming")),
        "nothing from before the address was confirmed"
    );
}

#[test]
fn subscriber_add_confirm_sends_the_same_link() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    let out = site.app.bo(&[
        "subscriber",
        "add",
        "cli@example.org",
        "--confirm",
        "--kinds",
        "wiki",
    ]);
    assert!(out.contains("confirmation email"), "{out}");
    assert_eq!(
        count(
            &site,
            "SELECT verified FROM bo_subscriber WHERE address = 'cli@example.org'"
        ),
        0
    );
    let mails = await_mails(&site, "cli@example.org", 1);
    let link = link_in(&mails[0]);
    assert!(
        link.starts_with("http://127.0.0.1/r/app/confirm/"),
        "{link}"
    );
    // The web pages are off here; the admin turns them on, the link works.
    site.app.bo(&["setting", "email-signup", "on"]);
    let srv = Server::start(&site.app.path, &[], &env);
    let r = request(&srv.addr, "POST", &path_of(&link), &[], "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        count(
            &site,
            "SELECT verified FROM bo_subscriber WHERE address = 'cli@example.org'"
        ),
        1
    );
    // --confirm and --verified contradict each other; an existing address
    // is refused as before.
    let e = Cmd::backoffice()
        .args([
            "subscriber",
            "add",
            "x@example.org",
            "--confirm",
            "--verified",
        ])
        .args(["-R", site.app.r()])
        .output()
        .failure();
    assert!(e.contains("cannot be used with"), "{e}");
    let e = Cmd::backoffice()
        .args(["subscriber", "add", "cli@example.org", "--confirm"])
        .args(["-R", site.app.r()])
        .output()
        .failure();
    assert!(e.contains("already a subscriber"), "{e}");
    // Without email there is no confirmation to send: said, nothing added.
    site.app.bo(&["setting", "email-send-method", "off"]);
    let e = Cmd::backoffice()
        .args(["subscriber", "add", "y@example.org", "--confirm"])
        .args(["-R", site.app.r()])
        .output()
        .failure();
    assert!(e.contains("email-send-method is off"), "{e}");
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM bo_subscriber WHERE address = 'y@example.org'"
        ),
        0
    );
}

#[test]
fn the_alerts_page_changes_kinds_and_mode_and_unsubscribes() {
    let env = Env::new();
    let site = signup_site(&env);
    let srv = Server::start(&site.app.path, &[], &env);
    let code: String = site.sql("SELECT code FROM bo_subscriber WHERE address = 'bob@example.org'");
    let path = format!("/r/app/alerts/{code}");
    let (cookie, token) = form(&srv.addr, &path);
    let r = post_form(
        &srv.addr,
        &path,
        Some(&cookie),
        &[
            ("csrf", &token),
            ("action", "save"),
            ("kinds", "ticket, checkin"),
            ("mode", "digest"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        site.sql::<String>(
            "SELECT kinds || ',' || digest FROM bo_subscriber WHERE address = 'bob@example.org'"
        ),
        "checkin,ticket,1"
    );
    let r = post_form(
        &srv.addr,
        &path,
        Some(&cookie),
        &[("csrf", &token), ("action", "save"), ("kinds", "Bad Kind")],
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("bad event kind"), "{}", r.body);
    let r = post_form(
        &srv.addr,
        &path,
        Some(&cookie),
        &[("csrf", &token), ("action", "unsubscribe")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        count(
            &site,
            "SELECT donotcall FROM bo_subscriber WHERE address = 'bob@example.org'"
        ),
        1
    );
    assert_eq!(
        get(&srv.addr, "/r/app/alerts/0123456789abcdef0123456789abcdef").status,
        404
    );
    // Escaped: an address or kinds never become markup.
    assert!(!r.body.contains("<script"), "{}", r.body);
}

// ---- in a real browser ----

/// The folder holding `node_modules/playwright-core` (installed by
/// scripts/test), if any.
fn playwright_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("BACKOFFICE_NODE_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            cache.join("backoffice-test/node")
        }
    };
    dir.join("node_modules/playwright-core")
        .is_dir()
        .then_some(dir)
}

/// The browser's driver: reads one JSON command a line, answers one JSON
/// line each (`goto`, `fill`, `check`, `click` that waits for the page it
/// loads, `quit`).
const DRIVER: &str = r#"
const { chromium } = require('playwright-core');
const readline = require('readline');
(async () => {
  const ctx = await chromium.launchPersistentContext(process.argv[2], {
    executablePath: process.argv[3],
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = ctx.pages()[0] || await ctx.newPage();
  page.setDefaultTimeout(20000);
  const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
  const shown = async (resp) => ({
    status: resp ? resp.status() : 0,
    url: page.url(),
    text: await page.evaluate(() => document.body ? document.body.innerText : ''),
    html: await page.content(),
  });
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const c = JSON.parse(line);
    try {
      if (c.op === 'goto') out(await shown(await page.goto(c.url)));
      else if (c.op === 'fill') { await page.fill(c.selector, c.value); out({ ok: true }); }
      else if (c.op === 'check') { await page.check(c.selector); out({ ok: true }); }
      else if (c.op === 'click') {
        const [resp] = await Promise.all([page.waitForNavigation(), page.click(c.selector)]);
        out(await shown(resp));
      } else if (c.op === 'quit') { out({ ok: true }); break; }
    } catch (e) { out({ error: String(e) }); }
  }
  await ctx.close();
})().catch((e) => { process.stdout.write(JSON.stringify({ error: String(e) }) + '\n'); process.exit(1); });
"#;

struct Browser {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
}

impl Browser {
    fn start(env: &Env, node_dir: &Path, chromium: &str) -> Browser {
        let script = env.path("driver.js");
        std::fs::write(&script, DRIVER).unwrap();
        let profile = env.path("chromium-profile");
        let mut child = Cmd::new("node")
            .arg(&script)
            .arg(&profile)
            .arg(chromium)
            .env("NODE_PATH", node_dir.join("node_modules"))
            .spawn_with(Stdio::piped(), Stdio::inherit());
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Browser {
            child,
            input,
            output,
        }
    }

    fn send(&mut self, cmd: serde_json::Value) -> serde_json::Value {
        writeln!(self.input, "{cmd}").unwrap();
        self.input.flush().unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("driver said {line:?} ({e}) to {cmd}"));
        assert!(v.get("error").is_none(), "{cmd}: {v}");
        v
    }

    fn goto(&mut self, url: &str) -> serde_json::Value {
        self.send(serde_json::json!({"op": "goto", "url": url}))
    }

    fn fill(&mut self, selector: &str, value: &str) {
        self.send(serde_json::json!({"op": "fill", "selector": selector, "value": value}));
    }

    fn check(&mut self, selector: &str) {
        self.send(serde_json::json!({"op": "check", "selector": selector}));
    }

    fn click(&mut self, selector: &str) -> serde_json::Value {
        self.send(serde_json::json!({"op": "click", "selector": selector}))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.input, "{{\"op\":\"quit\"}}");
        let _ = self.input.flush();
        if !wait_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten().is_some()
        }) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn text(v: &serde_json::Value) -> String {
    v["text"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_visitor_signs_up_confirms_changes_and_leaves_in_a_real_browser() {
    let chromium = ["chromium", "chromium-browser"].into_iter().find(|c| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if chromium.is_none() && !have("chromium") {
        return;
    }
    if !have("node") {
        return;
    }
    let Some(node_dir) = playwright_dir() else {
        if std::env::var("BACKOFFICE_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
            panic!(
                "playwright-core is required (BACKOFFICE_REQUIRE_EXTERNAL=1): scripts/test installs it"
            );
        }
        eprintln!("SKIPPED: playwright-core is not installed (scripts/test installs it)");
        return;
    };
    let chromium_path = Cmd::new("sh")
        .args(["-c", &format!("command -v {}", chromium.unwrap())])
        .output()
        .success()
        .trim()
        .to_owned();

    let env = Env::new();
    let site = signup_site(&env);
    let srv = Server::start(&site.app.path, &[], &env);
    let base = format!("http://{}", srv.addr);
    // The links in the mail point at this server.
    site.app
        .bo(&["setting", "email-url", &format!("{base}/r/app")]);
    let mut b = Browser::start(&env, &node_dir, &chromium_path);

    // 1. The form, filled in and sent.
    let p = b.goto(&format!("{base}/r/app/subscribe"));
    assert_eq!(p["status"], 200, "{p}");
    b.fill("input[name=address]", "visitor@example.org");
    b.fill("input[name=kinds]", "checkin,wiki");
    b.check("input[name=mode][value=immediate]");
    let p = b.click("button[type=submit]");
    assert_eq!(p["status"], 200, "{p}");
    assert!(text(&p).contains("Check your email"), "{p}");
    assert_eq!(
        site.sql::<String>(
            "SELECT kinds || ',' || digest || ',' || verified || ',' || donotcall FROM bo_subscriber WHERE address = 'visitor@example.org'"
        ),
        "checkin,wiki,0,0,0"
    );

    // 2. The worker sends the confirmation; its link, followed.
    let mails = await_mails(&site, "visitor@example.org", 1);
    let link = link_in(&mails[0]);
    assert!(link.starts_with(&base), "{link}");
    let p = b.goto(&link);
    assert_eq!(p["status"], 200, "{p}");
    assert_eq!(
        count(
            &site,
            "SELECT verified FROM bo_subscriber WHERE address = 'visitor@example.org'"
        ),
        0,
        "following the link only shows the button"
    );
    let p = b.click("button[name=confirm]");
    assert_eq!(p["status"], 200, "{p}");
    assert!(text(&p).contains("Subscribed"), "{p}");
    assert_eq!(
        count(
            &site,
            "SELECT verified AND NOT donotcall FROM bo_subscriber WHERE address = 'visitor@example.org'"
        ),
        1
    );

    // 3. Their page: other kinds, a digest.
    let p = b.click("a[href*=alerts]");
    assert_eq!(p["status"], 200, "{p}");
    let code: String =
        site.sql("SELECT code FROM bo_subscriber WHERE address = 'visitor@example.org'");
    assert_eq!(p["url"], format!("{base}/r/app/alerts/{code}"));
    assert!(text(&p).contains("visitor@example.org"), "{p}");
    b.fill("input[name=kinds]", "ticket");
    b.check("input[name=mode][value=digest]");
    let p = b.click("button[value=save]");
    assert_eq!(p["status"], 200, "{p}");
    assert!(text(&p).contains("Saved"), "{p}");
    assert_eq!(
        site.sql::<String>(
            "SELECT kinds || ',' || digest || ',' || donotcall FROM bo_subscriber WHERE address = 'visitor@example.org'"
        ),
        "ticket,1,0"
    );

    // 4. Unsubscribed.
    let p = b.click("button[value=unsubscribe]");
    assert_eq!(p["status"], 200, "{p}");
    assert!(text(&p).contains("Unsubscribed"), "{p}");
    assert_eq!(
        count(
            &site,
            "SELECT donotcall FROM bo_subscriber WHERE address = 'visitor@example.org'"
        ),
        1
    );
}

#[test]
fn the_in_memory_rate_table_stays_within_its_bound() {
    use backoffice_cli::web::clients::RateTable;
    let t = RateTable::with_cap(4);
    let b = |ip: &str| vec![("app".to_owned(), 100), (format!("app/{ip}"), 2)];
    // The repository's counter and three clients fill it.
    assert!(t.take(&b("a"), 10, 3600));
    assert!(t.take(&b("a"), 11, 3600));
    assert!(!t.take(&b("a"), 12, 3600), "a's two are used");
    assert!(t.take(&b("b"), 13, 3600));
    assert!(t.take(&b("c"), 14, 3600));
    assert_eq!(t.len(), 4);
    // Full within the hour: a new client is refused rather than grown for.
    assert!(!t.take(&b("d"), 15, 3600));
    assert_eq!(t.len(), 4);
    // Next hour the old counters make room.
    assert!(t.take(&b("d"), 3600 + 1, 3600));
    assert_eq!(t.len(), 2);
    assert!(t.take(&b("a"), 3600 + 2, 3600), "a starts afresh");
}

#[test]
fn the_demo_has_sign_up_on_and_prints_its_page() {
    let env = Env::new();
    let dir = env.path("demo");
    let mut child = Cmd::backoffice()
        .args(["demo", "--listen", "127.0.0.1:0", "--exit-after", "60"])
        .arg(&dir)
        .spawn_with(Stdio::piped(), Stdio::inherit());
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    while !text.contains("Ctrl-C") {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        text.push_str(&line);
    }
    let url = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("sign up"))
        .map(|u| u.trim().to_owned())
        .unwrap_or_else(|| panic!("no sign-up URL in {text}"));
    let path = path_of(&url);
    let addr = url.trim_start_matches("http://").split('/').next().unwrap();
    let r = get(addr, &path);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("name=\"address\""), "{}", r.body);
    crate::harness::kill(child);
}
