//! The status page that shows history and acts (issue 14, part 2), over
//! real HTTP to `backoffice serve`: details behind the repository's token
//! (a form gives an `HttpOnly; SameSite=Strict` session cookie), nothing
//! changed by a GET, CSRF tokens on forms, each operator action by form,
//! JSON API and CLI, the bounded history after real runs, the index's
//! order, the redacted public summary, the metrics token, and a DOM check
//! in headless Chromium.
//!
//! These repositories are registered with no `web::operator` token: every
//! request here says for itself what it sends.

use std::path::Path;
use std::time::Duration;

use crate::harness::{AppRepo, Cmd, Env, have, wait_until};
use crate::web::{Reply, Server, get, request};

/// Where the dead message goes: its address must never be public.
const ADDRESS: &str = "ann.secret@example.org";
/// In the hook's command: must never be public either.
const MARKER: &str = "MARKER-cmd-7f3a";

/// A repository with one dead outbox message (to [`ADDRESS`]), one hook
/// (with [`MARKER`] in its command), one webhook endpoint and a token.
struct Ops {
    app: AppRepo,
    token: String,
}

impl Ops {
    fn new(env: &Env, name: &str) -> Ops {
        let app = AppRepo::new(env, &format!("{name}.db"));
        for (k, v) in [
            ("email-send-method", "pipe"),
            ("email-send-command", "echo refused >&2; exit 1"),
            ("email-max-attempts", "1"),
            ("email-self", "bo@example.org"),
            ("email-url", "http://127.0.0.1/r/app"),
            ("email-subname", "[app]"),
            ("backoffice-lease-time", "1"),
        ] {
            app.bo(&["setting", k, v]);
        }
        app.bo(&["subscriber", "add", ADDRESS, "--verified"]);
        app.bo(&[
            "hook",
            "add",
            "--command",
            &format!("cat >/dev/null # {MARKER}"),
        ]);
        app.bo(&[
            "webhook",
            "add",
            "http://127.0.0.1:9/hook",
            "--secret",
            "0123456789abcdef0123",
        ]);
        let token = app.bo(&["token"]).trim().to_owned();
        // The first run sets the alerts' starting point; the event after
        // it is alerted, and the mail fails for good (one attempt).
        app.bo(&["run", "--nolease"]);
        app.bo(&[
            "publish",
            "--kind",
            "wiki",
            "--title",
            "One",
            "--no-trigger",
        ]);
        app.bo(&["run", "--nolease"]);
        let ops = Ops { app, token };
        assert_eq!(ops.dead(), 1, "the setup made one dead message");
        ops
    }

    fn conn(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.app.path).unwrap()
    }

    fn dead(&self) -> i64 {
        self.conn()
            .query_row(
                "SELECT count(*) FROM bo_outbox WHERE state = 'dead'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn next_attempt(&self, task: &str, target: &str) -> i64 {
        self.conn()
            .query_row(
                "SELECT next_attempt FROM bo_ledger WHERE task = ?1 AND target = ?2",
                [task, target],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn runs(&self) -> u64 {
        let v: Option<String> = self
            .conn()
            .query_row(
                "SELECT value FROM config WHERE name = 'backoffice-totals'",
                [],
                |r| r.get(0),
            )
            .ok();
        v.and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
            .and_then(|j| j["runs"].as_u64())
            .unwrap_or(0)
    }

    /// Everything a request could change: every row of the config
    /// (sessions aside), the outbox, the ledger, the hooks and endpoints.
    fn snapshot(&self) -> String {
        let c = self.conn();
        let mut out = String::new();
        for q in [
            "SELECT name || '=' || coalesce(value, '') FROM config ORDER BY name",
            "SELECT msgid || state || attempts FROM bo_outbox ORDER BY msgid",
            "SELECT task || target || cursor || failures || next_attempt FROM bo_ledger ORDER BY 1",
            "SELECT id || state FROM bo_webhook ORDER BY id",
        ] {
            let mut st = c.prepare(q).unwrap();
            for r in st.query_map([], |r| r.get::<_, String>(0)).unwrap() {
                out.push_str(&r.unwrap());
                out.push('\n');
            }
        }
        out
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }
}

/// Signs in with `token`; returns the reply and the `bo_session` value.
fn login(addr: &str, name: &str, token: &str) -> (Reply, Option<String>) {
    let r = request(
        addr,
        "POST",
        &format!("/r/{name}/login"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("token={token}"),
    );
    let sid = r
        .header("set-cookie")
        .and_then(|c| c.strip_prefix("bo_session=").map(str::to_owned))
        .and_then(|c| c.split(';').next().map(str::to_owned))
        .filter(|s| !s.is_empty());
    (r, sid)
}

/// The CSRF token in a page's forms.
fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    let rest = &page[at + 19..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn get_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    request(addr, "GET", path, headers, "")
}

#[test]
fn details_need_the_token_and_the_form_gives_a_strict_session_cookie() {
    let env = Env::new();
    let ops = Ops::new(&env, "app");
    let srv = Server::start(&ops.app.path, &["--no-trigger"], &env);

    // No token: the sign-in form, nothing of the details.
    let page = get(&srv.addr, "/r/app");
    assert_eq!(page.status, 401, "{page:?}");
    assert!(page.body.contains("name=\"token\""), "{}", page.body);
    for p in ["/r/app", "/r/app/status.json", "/metrics", "/"] {
        let r = get(&srv.addr, p);
        assert!(!r.body.contains(ADDRESS), "{p}: {}", r.body);
        assert!(!r.body.contains(MARKER), "{p}: {}", r.body);
    }
    assert_eq!(get(&srv.addr, "/r/app/status.json").status, 401);
    assert_eq!(get(&srv.addr, "/metrics").status, 401);
    let index = get(&srv.addr, "/");
    assert_eq!(index.status, 200);
    assert!(index.body.contains("sign in"), "{}", index.body);

    // A wrong token: refused, no cookie.
    let (r, sid) = login(&srv.addr, "app", "bo_wrong");
    assert_eq!(r.status, 401, "{r:?}");
    assert!(sid.is_none(), "{r:?}");

    // The token: a session cookie with the strict flags, scoped to the
    // repository, and a redirect to its page.
    let (r, sid) = login(&srv.addr, "app", &ops.token);
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location").as_deref(), Some("/r/app"));
    let cookie = r.header("set-cookie").unwrap();
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/r/app",
        "Max-Age=43200",
    ] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    let sid = sid.unwrap();
    assert_eq!(sid.len(), 64, "{sid}");
    assert!(
        !ops.snapshot().contains(&sid),
        "the session id itself is stored"
    );
    let c = format!("bo_session={sid}");
    let page = get_with(&srv.addr, "/r/app", &[("Cookie", &c)]);
    assert_eq!(page.status, 200, "{page:?}");
    for fact in [
        ADDRESS,
        MARKER,
        "<h2>Actions</h2>",
        "<h2>Settings</h2>",
        "sign out",
    ] {
        assert!(page.body.contains(fact), "{fact}: {}", page.body);
    }
    let js = get_with(&srv.addr, "/r/app/status.json", &[("Cookie", &c)]);
    assert_eq!(js.status, 200);
    assert!(js.body.contains(ADDRESS));

    // The bearer token opens the same, without a session.
    let b = ops.bearer();
    let js = get_with(&srv.addr, "/r/app/status.json", &[("Authorization", &b)]);
    assert_eq!(js.status, 200, "{js:?}");
    assert!(js.json()["problems"].to_string().contains(ADDRESS));

    // A made-up session is nothing.
    let fake = format!("bo_session={}", "a".repeat(64));
    assert_eq!(
        get_with(&srv.addr, "/r/app", &[("Cookie", &fake)]).status,
        401
    );

    // Sign out ends the session (it needs the CSRF token too).
    let bad = request(
        &srv.addr,
        "POST",
        "/r/app/logout",
        &[
            ("Cookie", &c),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        "csrf=nope",
    );
    assert_eq!(bad.status, 403, "{bad:?}");
    assert_eq!(get_with(&srv.addr, "/r/app", &[("Cookie", &c)]).status, 200);
    let out = request(
        &srv.addr,
        "POST",
        "/r/app/logout",
        &[
            ("Cookie", &c),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &format!("csrf={}", csrf(&page.body)),
    );
    assert_eq!(out.status, 303, "{out:?}");
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(get_with(&srv.addr, "/r/app", &[("Cookie", &c)]).status, 401);

    // A new token ends every session made under the old one.
    let (_, sid) = login(&srv.addr, "app", &ops.token);
    let c = format!("bo_session={}", sid.unwrap());
    assert_eq!(get_with(&srv.addr, "/r/app", &[("Cookie", &c)]).status, 200);
    ops.app.bo(&["token"]);
    assert_eq!(get_with(&srv.addr, "/r/app", &[("Cookie", &c)]).status, 401);
}

#[test]
fn get_never_changes_state_and_forms_need_the_csrf_token() {
    let env = Env::new();
    let ops = Ops::new(&env, "app");
    let srv = Server::start(&ops.app.path, &["--no-trigger"], &env);
    let (_, sid) = login(&srv.addr, "app", &ops.token);
    let c = format!("bo_session={}", sid.unwrap());
    let page = get_with(&srv.addr, "/r/app", &[("Cookie", &c)]);
    let token = csrf(&page.body);

    let before = ops.snapshot();
    for path in [
        "/",
        "/?sort=name",
        "/r/app",
        "/r/app?all=1",
        "/r/app/status.json",
        "/r/app/login",
        "/metrics",
        "/r/app/actions/outbox-retry",
        "/r/app/actions/run-now?id=1",
        "/r/app/actions/hook-pause?id=1",
        "/r/app/logout",
    ] {
        let r = get_with(&srv.addr, path, &[("Cookie", &c)]);
        assert!(r.status < 500, "{path}: {r:?}");
        if path.contains("/actions/") || path.ends_with("logout") {
            assert_eq!(r.status, 405, "{path}: {r:?}");
        }
    }
    assert_eq!(ops.snapshot(), before, "a GET changed the repository");
    assert_eq!(ops.runs(), 2, "a GET started a run");

    // A form without the CSRF token, or with another, changes nothing.
    let form = [
        ("Cookie", c.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    for body in ["", "csrf=", "csrf=0000", &format!("csrf={}x", token)] {
        let r = request(
            &srv.addr,
            "POST",
            "/r/app/actions/outbox-retry",
            &form,
            body,
        );
        assert_eq!(r.status, 403, "{body:?}: {r:?}");
    }
    // No session: refused, whatever the form says.
    let r = request(
        &srv.addr,
        "POST",
        "/r/app/actions/outbox-retry",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("csrf={token}"),
    );
    assert_eq!(r.status, 401, "{r:?}");
    // A wrong bearer token: refused.
    let r = request(
        &srv.addr,
        "POST",
        "/r/app/actions/outbox-retry",
        &[("Authorization", "Bearer bo_nope")],
        "",
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(ops.snapshot(), before);
    assert_eq!(ops.dead(), 1);

    // With it, the action is done.
    let r = request(
        &srv.addr,
        "POST",
        "/r/app/actions/outbox-retry",
        &form,
        &format!("csrf={token}"),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("1 dead message queued again"), "{}", r.body);
    assert_eq!(ops.dead(), 0);
}

#[test]
fn each_action_works_by_form_json_api_and_cli() {
    let env = Env::new();
    let ops = Ops::new(&env, "app");
    let srv = Server::start(&ops.app.path, &["--no-trigger"], &env);
    let (_, sid) = login(&srv.addr, "app", &ops.token);
    let c = format!("bo_session={}", sid.unwrap());
    let page = get_with(&srv.addr, "/r/app", &[("Cookie", &c)]);
    let token = csrf(&page.body);
    assert!(page.body.contains("Retry 1 dead message"), "{}", page.body);
    let form = |action: &str, id: Option<i64>| {
        let body = match id {
            Some(i) => format!("csrf={token}&id={i}"),
            None => format!("csrf={token}"),
        };
        let r = request(
            &srv.addr,
            "POST",
            &format!("/r/app/actions/{action}"),
            &[
                ("Cookie", &c),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            &body,
        );
        assert_eq!(r.status, 200, "{action}: {r:?}");
        r
    };
    let b = ops.bearer();
    let api = |action: &str, body: &str| {
        let r = request(
            &srv.addr,
            "POST",
            &format!("/r/app/actions/{action}"),
            &[("Authorization", &b), ("Content-Type", "application/json")],
            body,
        );
        assert_eq!(r.status, 200, "{action}: {r:?}");
        r.json()
    };
    let redead = || {
        ops.app.bo(&["run", "--nolease"]);
        assert_eq!(ops.dead(), 1, "the retried message failed again");
    };
    let paused = i64::MAX;

    // Dead messages: form, API, CLI.
    form("outbox-retry", None);
    assert_eq!(ops.dead(), 0);
    redead();
    let v = api("outbox-retry", "");
    assert_eq!(v["done"], "1 dead message queued again", "{v}");
    assert_eq!(ops.dead(), 0);
    redead();
    ops.app.bo(&["outbox", "retry"]);
    assert_eq!(ops.dead(), 0);

    // A hook: pause and resume by form, API and CLI.
    form("hook-pause", Some(1));
    assert_eq!(ops.next_attempt("hooks", "1"), paused);
    let page = get_with(&srv.addr, "/r/app", &[("Cookie", &c)]);
    assert!(page.body.contains("paused"), "{}", page.body);
    api("hook-resume", r#"{"id":1}"#);
    assert_eq!(ops.next_attempt("hooks", "1"), 0);
    api("hook-pause", r#"{"id":1}"#);
    assert_eq!(ops.next_attempt("hooks", "1"), paused);
    form("hook-resume", Some(1));
    assert_eq!(ops.next_attempt("hooks", "1"), 0);
    ops.app.bo(&["hook", "pause", "1"]);
    assert_eq!(ops.next_attempt("hooks", "1"), paused);
    ops.app.bo(&["hook", "resume", "1"]);
    assert_eq!(ops.next_attempt("hooks", "1"), 0);
    ops.app.bo(&["hook", "pause", "1"]);
    ops.app.bo(&["hook", "retry", "1"]);
    assert_eq!(ops.next_attempt("hooks", "1"), 0);
    // A paused hook does not run: its cursor stays behind a new event.
    ops.app.bo(&["hook", "pause", "1"]);
    ops.app.bo(&[
        "publish",
        "--kind",
        "wiki",
        "--title",
        "Two",
        "--no-trigger",
    ]);
    ops.app.bo(&["run", "--nolease"]);
    let cursor: i64 = ops
        .conn()
        .query_row(
            "SELECT cursor FROM bo_ledger WHERE task = 'hooks' AND target = '1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(cursor, 1, "a paused hook ran");
    let due = ops.app.bo(&["status"]);
    assert!(
        !due.contains("9223372036854775807"),
        "a paused hook made a far-future due time: {due}"
    );

    // A webhook endpoint: pause and resume by API, form and CLI.
    api("webhook-pause", r#"{"id":1}"#);
    assert_eq!(ops.next_attempt("webhooks", "1"), paused);
    form("webhook-resume", Some(1));
    assert_eq!(ops.next_attempt("webhooks", "1"), 0);
    ops.app.bo(&["webhook", "pause", "1"]);
    assert_eq!(ops.next_attempt("webhooks", "1"), paused);
    ops.app.bo(&["webhook", "resume", "1"]);
    assert_eq!(ops.next_attempt("webhooks", "1"), 0);

    // Bad input: named, nothing changed.
    let r = request(
        &srv.addr,
        "POST",
        "/r/app/actions/hook-pause",
        &[("Authorization", &b)],
        r#"{"id":99}"#,
    );
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("99"), "{}", r.body);
    let r = request(
        &srv.addr,
        "POST",
        "/r/app/actions/hook-pause",
        &[("Authorization", &b)],
        "",
    );
    assert_eq!(r.status, 400, "{r:?}");
    let r = request(
        &srv.addr,
        "POST",
        "/r/app/actions/explode",
        &[("Authorization", &b)],
        "",
    );
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("run-now"), "{}", r.body);

    // Run now, by form and API: a worker runs (no request's check here:
    // --no-trigger), recorded as a run.
    let before = ops.runs();
    form("run-now", None);
    assert!(
        wait_until(Duration::from_secs(20), || ops.runs() > before),
        "no run after run-now"
    );
    let before = ops.runs();
    let v = api("run-now", "");
    assert!(v["done"].as_str().unwrap().contains("started"), "{v}");
    assert!(
        wait_until(Duration::from_secs(20), || ops.runs() > before),
        "no run after the API's run-now"
    );
}

/// The history table after real runs: every run counted in its hour and
/// day, and no more buckets than a day of hours and a month of days, the
/// old ones pruned by the next run.
#[test]
fn history_buckets_are_bounded_and_count_real_runs() {
    let env = Env::new();
    let app = AppRepo::new(&env, "app.db");
    app.bo(&["setting", "backoffice-lease-time", "1"]);
    let hook_out = env.path("hook.out");
    app.bo(&[
        "hook",
        "add",
        "--command",
        &format!("cat >> '{}'", hook_out.display()),
    ]);
    // Old buckets, as if the repository had been busy for 100 days.
    let now = crate::harness::now();
    let hour = now - now % 3600;
    let day = now - now % 86_400;
    let hours: Vec<String> = (1..100)
        .map(|i| {
            format!(
                "{{\"start\":{},\"runs\":1,\"items\":0,\"failures\":0}}",
                hour - i * 3600
            )
        })
        .collect();
    let days: Vec<String> = (1..100)
        .map(|i| {
            format!(
                "{{\"start\":{},\"runs\":5,\"items\":0,\"failures\":0}}",
                day - i * 86_400
            )
        })
        .collect();
    app.bo(&["run", "--nolease"]);
    rusqlite::Connection::open(&app.path)
        .unwrap()
        .execute(
            "UPDATE config SET value = ?1 WHERE name = 'backoffice-history'",
            [format!(
                "{{\"hours\":[{}],\"days\":[{}]}}",
                hours.join(","),
                days.join(",")
            )],
        )
        .unwrap();
    for i in 0..3 {
        app.bo(&[
            "publish",
            "--kind",
            "wiki",
            "--title",
            &format!("e{i}"),
            "--no-trigger",
        ]);
        app.bo(&["run", "--nolease"]);
    }
    let v: String = rusqlite::Connection::open(&app.path)
        .unwrap()
        .query_row(
            "SELECT value FROM config WHERE name = 'backoffice-history'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let h: serde_json::Value = serde_json::from_str(&v).unwrap();
    let hours = h["hours"].as_array().unwrap();
    let days = h["days"].as_array().unwrap();
    assert!(hours.len() <= 24 && days.len() <= 31, "{v}");
    assert_eq!(hours.len(), 24, "23 old hours kept and this one: {v}");
    assert_eq!(days.len(), 31, "{v}");
    let first_hour = hours[0]["start"].as_i64().unwrap();
    assert!(
        first_hour > now - 24 * 3600,
        "an hour older than a day kept: {v}"
    );
    // The runs since the old buckets: 3 runs with one item each (the hook),
    // in this hour (or, across an hour's turn, spread over two).
    let last = &hours[23];
    let recent = |k: &str| -> u64 {
        hours
            .iter()
            .filter(|b| b["start"].as_i64().unwrap() >= now - 3600)
            .map(|b| b[k].as_u64().unwrap())
            .sum()
    };
    assert!(last["start"].as_i64().unwrap() >= hour, "{v}");
    assert!(recent("runs") >= 3, "{v}");
    assert_eq!(recent("items"), 3, "{v}");
    assert_eq!(recent("failures"), 0, "{v}");

    // The page draws it: SVG charts with captions giving the totals.
    let token = app.bo(&["token"]).trim().to_owned();
    let srv = Server::start(&app.path, &["--no-trigger"], &env);
    let b = format!("Bearer {token}");
    let page = get_with(&srv.addr, "/r/app", &[("Authorization", &b)]);
    assert_eq!(page.status, 200, "{page:?}");
    for fact in [
        "id=\"history-hour\"",
        "id=\"history-day\"",
        "<svg",
        "<rect",
        "Items per hour, the last 24 hours: <b>3</b>",
    ] {
        assert!(page.body.contains(fact), "{fact}: {}", page.body);
    }
}

/// Sets `name` to `value` in the repository file `path`.
fn set(path: &Path, name: &str, value: &str) {
    Cmd::backoffice()
        .args(["setting", "-R"])
        .arg(path)
        .args([name, value])
        .output()
        .success();
}

/// A bad stored setting: one problem in the status.
fn break_setting(path: &Path, name: &str) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute(
            "INSERT OR REPLACE INTO config(name, value) VALUES (?1, 'not-a-number')",
            [name],
        )
        .unwrap();
}

/// The repository names in the index's table, in order.
fn index_order(body: &str) -> Vec<String> {
    body.split("<tr data-problems=")
        .skip(1)
        .filter_map(|r| {
            let at = r.find("href=\"/r/")? + 9;
            Some(r[at..at + r[at..].find('"')?].to_owned())
        })
        .collect()
}

#[test]
fn the_index_puts_problems_first_and_sorts_on_request() {
    let env = Env::new();
    let dir = env.path("repos");
    std::fs::create_dir(&dir).unwrap();
    for name in ["alpha", "bravo", "charlie", "delta"] {
        let p = dir.join(format!("{name}.db"));
        rusqlite::Connection::open(&p)
            .unwrap()
            .execute_batch("CREATE TABLE app(x)")
            .unwrap();
        set(
            &p,
            "web-public-summary",
            if name == "delta" { "off" } else { "on" },
        );
    }
    // bravo: one problem; charlie: two; delta: private (counts hidden).
    break_setting(&dir.join("bravo.db"), "backoffice-lease-time");
    break_setting(&dir.join("charlie.db"), "backoffice-lease-time");
    break_setting(&dir.join("charlie.db"), "backoffice-heartbeat");
    break_setting(&dir.join("delta.db"), "backoffice-heartbeat");
    let srv = Server::start(&dir, &["--repolist", "--no-trigger"], &env);
    let index = get(&srv.addr, "/");
    assert_eq!(index.status, 200, "{index:?}");
    assert_eq!(
        index_order(&index.body),
        ["charlie", "bravo", "alpha", "delta"],
        "{}",
        index.body
    );
    assert!(
        index.body.contains("2 problems (backoffice)"),
        "{}",
        index.body
    );
    assert!(
        !index.body.contains("not-a-number"),
        "a problem's text: {}",
        index.body
    );
    let by_name = get(&srv.addr, "/?sort=name");
    assert_eq!(
        index_order(&by_name.body),
        ["alpha", "bravo", "charlie", "delta"],
        "{}",
        by_name.body
    );
    let other = get(&srv.addr, "/?sort=bogus");
    assert_eq!(index_order(&other.body), index_order(&index.body));

    // The rows are kept (no repository is opened per request), then read
    // again: a new problem in alpha is not in the next page if it comes
    // within the rows' lifetime, and is in a later one.
    let as_of = |body: &str| -> Option<u64> {
        let at = body.find("as of ")? + 6;
        body[at..].split(' ').next()?.parse().ok()
    };
    break_setting(&dir.join("alpha.db"), "backoffice-lease-time");
    let soon = get(&srv.addr, "/");
    if as_of(&soon.body).is_some_and(|s| s < 9) {
        assert_eq!(index_order(&soon.body)[..3], ["charlie", "bravo", "alpha"]);
        assert!(
            !soon
                .body
                .contains("<tr data-problems=\"1\"><td><a href=\"/r/alpha\"")
        );
    }
    assert!(
        wait_until(Duration::from_secs(40), || {
            get(&srv.addr, "/")
                .body
                .contains("<tr data-problems=\"1\"><td><a href=\"/r/alpha\"")
        }),
        "the index never read alpha again"
    );
}

/// Under CGI (a process per request) the session works too: it is kept
/// in the repository, not in a server's memory.
#[test]
fn a_session_opened_through_cgi_works_in_the_next_cgi_process() {
    let env = Env::new();
    let ops = Ops::new(&env, "app");
    let (out, _) = crate::web::cgi(&ops.app.path, "GET", "/r/app", &[], "");
    assert!(out.starts_with("Status: 401"), "{out}");
    assert!(!out.contains(ADDRESS), "{out}");
    let form = format!("token={}", ops.token);
    let (out, _) = crate::web::cgi(
        &ops.app.path,
        "POST",
        "/r/app/login",
        &[
            ("CONTENT_TYPE", "application/x-www-form-urlencoded"),
            ("HTTP_X_FORWARDED_PROTO", "https"),
        ],
        &form,
    );
    assert!(out.starts_with("Status: 303"), "{out}");
    let cookie = out
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {out}"));
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/r/app", "Secure"] {
        assert!(cookie.contains(flag), "{flag}: {cookie}");
    }
    let pair = cookie.split(';').next().unwrap();
    let (out, _) = crate::web::cgi(&ops.app.path, "GET", "/r/app", &[("HTTP_COOKIE", pair)], "");
    assert!(out.starts_with("Status: 200"), "{out}");
    assert!(
        out.contains(ADDRESS) && out.contains("<h2>Actions</h2>"),
        "{out}"
    );
}

#[test]
fn the_public_summary_hides_addresses_commands_and_settings() {
    let env = Env::new();
    let ops = Ops::new(&env, "app");
    ops.app.bo(&["setting", "web-public-summary", "on"]);
    let srv = Server::start(&ops.app.path, &["--no-trigger"], &env);
    let b = ops.bearer();
    let full = get_with(&srv.addr, "/r/app/status.json", &[("Authorization", &b)]).json();
    let n = full["problems"].as_array().unwrap().len();
    assert!(n >= 2, "{full}");
    let page = get(&srv.addr, "/r/app");
    assert_eq!(page.status, 200, "{page:?}");
    for fact in [
        "<li>alerts: ",
        "<li>webhooks: ",
        "sign in",
        "History",
        "<svg",
        "Totals",
    ] {
        assert!(page.body.contains(fact), "{fact}: {}", page.body);
    }
    let js = get(&srv.addr, "/r/app/status.json");
    assert_eq!(js.status, 200);
    assert_eq!(js.json()["redacted"], true, "{}", js.body);
    assert_eq!(js.json()["problems"], n, "{}", js.body);
    let index = get(&srv.addr, "/");
    assert!(
        index
            .body
            .contains(&format!("{n} problems (alerts, backoffice, webhooks)")),
        "{}",
        index.body
    );
    let metrics = get(&srv.addr, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .contains(&format!("backoffice_problems{{repo=\"app\"}} {n}")),
        "{}",
        metrics.body
    );
    for (what, r) in [
        ("page", &page),
        ("json", &js),
        ("index", &index),
        ("metrics", &metrics),
    ] {
        for secret in [
            ADDRESS,
            MARKER,
            "127.0.0.1:9",
            "email-send-command",
            "refused",
        ] {
            assert!(
                !r.body.contains(secret),
                "{what} shows {secret}: {}",
                r.body
            );
        }
    }
    // The page with the token shows them: the check above could fail.
    let full = get_with(&srv.addr, "/r/app", &[("Authorization", &b)]);
    for secret in [ADDRESS, MARKER, "127.0.0.1:9", "email-send-command"] {
        assert!(full.body.contains(secret), "{secret}: {}", full.body);
    }
}

#[test]
fn the_metrics_token_opens_metrics_and_nothing_else() {
    let env = Env::new();
    let ops = Ops::new(&env, "app");
    let m = ops.app.bo(&["token", "--metrics"]).trim().to_owned();
    assert!(m.starts_with("bo_"), "{m}");
    assert!(
        ops.app
            .bo(&["token", "--metrics", "--check"])
            .contains("is set")
    );
    let srv = Server::start(&ops.app.path, &["--no-trigger"], &env);
    let auth = format!("Bearer {m}");
    let r = get_with(&srv.addr, "/metrics", &[("Authorization", &auth)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains("backoffice_repository_up{repo=\"app\"} 1"),
        "{}",
        r.body
    );
    assert_eq!(get(&srv.addr, "/metrics").status, 401);
    assert_eq!(
        get_with(&srv.addr, "/metrics", &[("Authorization", "Bearer bo_x")]).status,
        401
    );
    for p in ["/r/app", "/r/app/status.json"] {
        assert_eq!(
            get_with(&srv.addr, p, &[("Authorization", &auth)]).status,
            401,
            "{p}"
        );
    }
    let r = request(
        &srv.addr,
        "POST",
        "/r/app/actions/run-now",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(r.status, 401, "{r:?}");
    ops.app.bo(&["token", "--metrics", "--revoke"]);
    assert_eq!(
        get_with(&srv.addr, "/metrics", &[("Authorization", &auth)]).status,
        401
    );
}

/// The pages in a real browser: headless Chromium's DOM of the summary
/// and the index holds the key facts (the Queues table without zero rows,
/// the Database table apart, the charts, the problems first).
#[test]
fn chromium_renders_the_key_facts() {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|p| have(p))
    else {
        assert!(
            std::env::var("BACKOFFICE_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
            "chromium is required (BACKOFFICE_REQUIRE_EXTERNAL=1)"
        );
        eprintln!("skipped: no chromium (scripts/test installs it)");
        return;
    };
    let env = Env::new();
    let ops = Ops::new(&env, "app");
    ops.app.bo(&["setting", "web-public-summary", "on"]);
    let srv = Server::start(&ops.app.path, &["--no-trigger"], &env);
    let dom = |path: &str| {
        let profile = env.path(&format!("chromium-{}", path.len()));
        Cmd::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--window-size=400,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(format!("http://{}{path}", srv.addr))
            .output()
            .success()
    };
    let page = dom("/r/app");
    for fact in [
        "id=\"history-hour\"",
        "id=\"history-day\"",
        "<li>alerts: ",
        "id=\"queues\"",
        "id=\"database\"",
        "page-count",
    ] {
        assert!(page.contains(fact), "{fact}: {page}");
    }
    // Zero rows hidden: the queues table shows the dead message but not
    // the empty "sent" count.
    let queues = &page[page.find("id=\"queues\"").unwrap()..];
    let queues = &queues[..queues.find("</table>").unwrap()];
    assert!(queues.contains(">dead<"), "{queues}");
    assert!(!queues.contains(">sent<"), "{queues}");
    assert!(!page.contains(ADDRESS), "{page}");
    let index = dom("/");
    assert!(
        index.contains("problems (alerts, backoffice, webhooks)"),
        "{index}"
    );
}
