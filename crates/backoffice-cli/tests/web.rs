//! The web front over real HTTP on 127.0.0.1: `backoffice serve` as a child
//! process, spoken to with raw HTTP/1.1 on TCP sockets; `backoffice cgi`
//! run as a CGI host runs it (from the environment and stdin), and under
//! Python's standard-library CGI server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{AppRepo, Cmd, Env, have, wait_child, wait_until, zombie_children};

/// A reply.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

// ---- the operator's token, sent for the tests that look at details ----
//
// Details (the status page, status.json, /metrics) need the repository's
// token. Tests about other things (limits, CGI, locking) read them as the
// operator: `operator(path, token)` records a repository's token, a server
// started on it learns it, and `request` sends it as a bearer token on the
// view routes of a repository it knows, unless the test sends its own
// `Authorization`. Tests of the access rules themselves (`operate.rs`)
// use their own repositories, registered nowhere.

use std::collections::HashMap;
use std::sync::Mutex;

static TOKENS: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
/// Per server address, the (repository name, token) pairs it is sent.
type Served = HashMap<String, Vec<(String, String)>>;
static SERVED: Mutex<Option<Served>> = Mutex::new(None);

/// Records `token` as the token of the repository file `path`.
pub fn operator(path: &Path, token: &str) {
    TOKENS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(path.to_owned(), token.to_owned());
}

/// The recorded tokens of the repository file `path`, or of the files in
/// the directory `path`, by served name.
pub fn tokens_for(path: &Path) -> Vec<(String, String)> {
    let t = TOKENS.lock().unwrap();
    let Some(t) = t.as_ref() else {
        return Vec::new();
    };
    t.iter()
        .filter(|(p, _)| p.as_path() == path || p.parent() == Some(path))
        .filter_map(|(p, tok)| Some((p.file_stem()?.to_str()?.to_owned(), tok.clone())))
        .collect()
}

static URL_TOKENS: Mutex<Vec<(String, String, String)>> = Mutex::new(Vec::new());

/// Records `token` as the token of the PostgreSQL schema `name` at `url`.
pub fn operator_url(url: &str, name: &str, token: &str) {
    URL_TOKENS
        .lock()
        .unwrap()
        .push((url.to_owned(), name.to_owned(), token.to_owned()));
}

/// The recorded tokens of the schema `url` names, or without `schema=` of
/// every schema of its database.
pub fn tokens_for_url(url: &str) -> Vec<(String, String)> {
    let base = |u: &str| u.split('?').next().unwrap_or("").to_owned();
    URL_TOKENS
        .lock()
        .unwrap()
        .iter()
        .filter(|(u, _, _)| u == url || (!url.contains("schema=") && base(u) == base(url)))
        .map(|(_, n, t)| (n.clone(), t.clone()))
        .collect()
}

/// Sends these tokens (by repository name) on server `addr`'s view routes.
pub fn remember_server(addr: &str, tokens: Vec<(String, String)>) {
    SERVED
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(addr.to_owned(), tokens);
}

/// The token a GET of `path` on server `addr` goes with, if any.
fn operator_token(addr: &str, path: &str) -> Option<String> {
    let served = SERVED.lock().unwrap();
    let tokens = served.as_ref()?.get(addr)?;
    let path = path.split('?').next().unwrap_or("");
    if path == "/metrics" {
        return tokens.first().map(|(_, t)| t.clone());
    }
    let rest = path.strip_prefix("/r/")?;
    let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if !matches!(tail, "" | "status.json") {
        return None;
    }
    tokens
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.clone())
}

/// One HTTP/1.1 request on a new connection (`Connection: close`).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "GET"
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    {
        if let Some(t) = operator_token(addr, path) {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read reply");
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

pub fn get(addr: &str, path: &str) -> Reply {
    request(addr, "GET", path, &[], "")
}

/// `backoffice serve` as a child process, stopped (SIGTERM) on drop.
pub struct Server {
    pub child: Child,
    /// Kept open: the server may print more.
    _stdout: BufReader<std::process::ChildStdout>,
    pub addr: String,
    pub stderr: PathBuf,
}

impl Server {
    pub fn start(path: &Path, args: &[&str], env: &Env) -> Server {
        let cmd = Cmd::backoffice()
            .arg("serve")
            .arg(path)
            .args(["--listen", "127.0.0.1:0"])
            .args(args);
        let srv = Server::launch(cmd, env);
        srv.operate(tokens_for(path));
        srv
    }

    /// Sends these tokens (by repository name) on the view routes.
    pub fn operate(&self, tokens: Vec<(String, String)>) {
        remember_server(&self.addr, tokens);
    }

    /// Starts `cmd` (a `serve` command line) and reads the address it
    /// prints first.
    pub fn launch(cmd: Cmd, env: &Env) -> Server {
        let stderr = env.path("serve.stderr");
        let mut child = cmd.env("RUST_LOG", "info").spawn_with(
            Stdio::piped(),
            Stdio::from(std::fs::File::create(&stderr).unwrap()),
        );
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| {
                panic!(
                    "no address in {line:?}; stderr: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            })
            .to_owned();
        Server {
            child,
            _stdout: stdout,
            addr,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// A metric's value for this repository from `/metrics`.
    pub fn metric(&self, line_start: &str) -> f64 {
        let m = get(&self.addr, "/metrics");
        m.body
            .lines()
            .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in {}", m.body))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if !wait_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten().is_some()
        }) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A repository with email into a folder, three subscribers and a token.
pub struct Site {
    pub app: AppRepo,
    pub mail: PathBuf,
    pub token: String,
}

impl Site {
    pub fn new(env: &Env, name: &str) -> Site {
        let app = AppRepo::new(env, &format!("{name}.db"));
        let mail = env.path(&format!("{name}-mail"));
        for (k, v) in [
            ("email-send-method", "dir"),
            ("email-self", "bo@example.org"),
            ("email-url", "http://127.0.0.1/r/app"),
            ("email-send-dir", mail.to_str().unwrap()),
            ("backoffice-lease-time", "1"),
            ("email-subname", "[app]"),
            ("backoffice-logfile", env.path("run.log").to_str().unwrap()),
        ] {
            app.bo(&["setting", k, v]);
        }
        app.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
        app.bo(&[
            "subscriber",
            "add",
            "bob@example.org",
            "--verified",
            "--kinds",
            "wiki",
        ]);
        let token = app.bo(&["token"]).trim().to_owned();
        operator(&app.path, &token);
        // The first run sets the digest boundary; after it nothing is due.
        app.bo(&["run", "--nolease"]);
        Site { app, mail, token }
    }

    pub fn mails(&self) -> usize {
        std::fs::read_dir(&self.mail)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    pub fn sql<T: rusqlite::types::FromSql>(&self, q: &str) -> T {
        rusqlite::Connection::open(&self.app.path)
            .unwrap()
            .query_row(q, [], |r| r.get(0))
            .unwrap()
    }
}

#[test]
fn status_page_json_index_and_metrics_show_the_facts() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    site.app.bo(&[
        "publish",
        "--kind",
        "wiki",
        "--title",
        "First page",
        "--no-trigger",
    ]);
    site.app.bo(&["run", "--nolease"]);
    assert_eq!(
        site.mails(),
        2,
        "the setup sent one alert to each subscriber"
    );
    let srv = Server::start(&site.app.path, &[], &env);

    let page = get(&srv.addr, "/r/app");
    assert_eq!(page.status, 200, "{page:?}");
    // The lease's fencing term and what happens to old events.
    assert!(
        page.body.contains("<tr><th>Lease term</th><td>")
            && page.body.contains("(takeovers so far)")
            && page.body.contains(
                "<tr><th>Event log</th><td>every event kept (event-retention-days 0)</td></tr>"
            ),
        "{}",
        page.body
    );
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
    for fact in [
        "<h1>app</h1>",
        "Last run",
        "2 items",
        "On deck",
        "nobody",
        "Due next",
        "First page",
        "outbox",
        "email-send-method",
        "<td>dir</td>",
        // 2 alerts, and 2 maintenance steps (check, retention; optimize
        // leaves a database this small unanalyzed) in the first run.
        "2 runs, 4 items",
    ] {
        assert!(
            page.body.contains(fact),
            "{fact:?} missing from the page:\n{}",
            page.body
        );
    }
    assert!(!page.body.contains("<script"), "no JavaScript");
    // The run log's last lines.
    assert!(page.body.contains("2 alerts"), "{}", page.body);

    let js = get(&srv.addr, "/r/app/status.json");
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type").as_deref(),
        Some("application/json")
    );
    // The repository's path never shows (settings may name other paths,
    // such as the mail folder, but not the database's).
    let path = site.app.path.to_str().unwrap();
    assert!(
        !js.body.contains(path),
        "the path {path} shows: {}",
        js.body
    );
    let v = js.json();
    assert_eq!(v["repo"], "app", "the name, never the path");
    assert_eq!(v["totals"]["runs"], 2, "the setup's run and ours");
    assert_eq!(v["last_run"]["tasks"][0]["items"], 2);
    let sent = v["gauges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["queue"] == "outbox" && g["state"] == "sent")
        .expect("an outbox gauge");
    assert_eq!(sent["value"], 2);

    let index = get(&srv.addr, "/");
    assert_eq!(index.status, 200);
    assert!(index.body.contains("href=\"/r/app\""), "{}", index.body);

    let m = get(&srv.addr, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    for line in [
        "backoffice_runs_total{repo=\"app\"} 2",
        "backoffice_items_total{repo=\"app\"} 4",
        "backoffice_queue{repo=\"app\",task=\"maintenance\",queue=\"maintenance\",state=\"check-failed\"} 0",
        "backoffice_task_failures_total{repo=\"app\"} 0",
        "backoffice_queue{repo=\"app\",task=\"alerts\",queue=\"outbox\",state=\"sent\"} 2",
        "# TYPE backoffice_runs_total counter",
    ] {
        assert!(m.body.contains(line), "{line:?} missing from:\n{}", m.body);
    }
    assert!(
        m.body
            .contains("backoffice_last_run_age_seconds{repo=\"app\"}")
    );
}

#[test]
fn publishing_over_http_needs_the_token_and_the_alert_follows_the_reply() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    let srv = Server::start(&site.app.path, &[], &env);
    let ev = r#"{"kind":"wiki","title":"Hello over HTTP","author":"ann"}"#;

    let none = request(&srv.addr, "POST", "/r/app/events", &[], ev);
    assert_eq!(none.status, 401, "{none:?}");
    assert!(
        none.header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    assert!(
        none.json()["error"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );
    let wrong_token = format!("Bearer {}x", site.token);
    for auth in [
        "Bearer bo_0000",
        wrong_token.as_str(),
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        &site.token,
    ] {
        let r = request(
            &srv.addr,
            "POST",
            "/r/app/events",
            &[("Authorization", auth)],
            ev,
        );
        assert_eq!(r.status, 401, "{auth}: {r:?}");
    }
    let ok_auth = site.auth();
    let auth = [("Authorization", ok_auth.as_str())];
    for (body, status, says) in [
        ("", 400, "empty"),
        ("{not json", 400, "bad JSON"),
        (r#"{"kind":"wiki"}"#, 400, "title"),
        (r#"{"kind":"Wiki!","title":"x"}"#, 400, "bad event kind"),
        (
            r#"{"kind":"wiki","title":"x","colour":"red"}"#,
            400,
            "colour",
        ),
        (r#"{"kind":"wiki","title":"   "}"#, 400, "needs a title"),
    ] {
        let r = request(&srv.addr, "POST", "/r/app/events", &auth, body);
        assert_eq!(r.status, status, "{body}: {r:?}");
        assert!(
            r.json()["error"].as_str().unwrap().contains(says),
            "{body}: {}",
            r.body
        );
    }
    assert_eq!(site.mails(), 0, "nothing was published");
    let r = request(&srv.addr, "POST", "/r/app/events", &auth, ev);
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r.json()["id"].as_i64().unwrap() > 0);
    // The reply's after-request check started a worker: both subscribers
    // want wiki events.
    assert!(
        wait_until(Duration::from_secs(10), || site.mails() == 2),
        "alerts: {}; server log:\n{}",
        site.mails(),
        srv.log()
    );
    assert!(srv.metric("backoffice_workers_started_total{repo=\"app\"}") >= 1.0);

    // A new token replaces the old; a revoked token leaves the API shut.
    site.app.bo(&["token"]);
    let r = request(&srv.addr, "POST", "/r/app/events", &auth, ev);
    assert_eq!(r.status, 401, "the old token no longer works");
    site.app.bo(&["token", "--revoke"]);
    let r = request(&srv.addr, "POST", "/r/app/events", &auth, ev);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("backoffice token"));
    assert!(
        !srv.log().contains(&site.token),
        "the token never reaches the log"
    );
}

#[test]
fn the_subscribers_api_lists_adds_refuses_and_removes() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    let srv = Server::start(&site.app.path, &[], &env);
    let a = site.auth();
    let auth = [("Authorization", a.as_str())];
    assert_eq!(get(&srv.addr, "/r/app/subscribers").status, 401);
    let list = request(&srv.addr, "GET", "/r/app/subscribers", &auth, "");
    assert_eq!(list.status, 200);
    let v = list.json();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(
        !list.body.contains("\"code\""),
        "unsubscribe codes are not listed"
    );

    let add = request(
        &srv.addr,
        "POST",
        "/r/app/subscribers",
        &auth,
        r#"{"address":"Cy@Example.org","name":"Cy","kinds":"checkin, wiki","verified":true}"#,
    );
    assert_eq!(add.status, 201, "{add:?}");
    assert_eq!(add.json()["kinds"], "checkin,wiki");
    assert_eq!(
        add.json()["address"],
        "Cy@Example.org",
        "kept as given, matched without case"
    );
    let dup = request(
        &srv.addr,
        "POST",
        "/r/app/subscribers",
        &auth,
        r#"{"address":"cy@example.org"}"#,
    );
    assert_eq!(dup.status, 409, "{dup:?}");
    let bad = request(
        &srv.addr,
        "POST",
        "/r/app/subscribers",
        &auth,
        r#"{"address":"not an address"}"#,
    );
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("bad address"), "{}", bad.body);

    let del = request(
        &srv.addr,
        "DELETE",
        "/r/app/subscribers/cy@example.org",
        &auth,
        "",
    );
    assert_eq!(del.status, 200, "{del:?}");
    assert_eq!(del.json()["removed"]["address"], "Cy@Example.org");
    let again = request(
        &srv.addr,
        "DELETE",
        "/r/app/subscribers?address=cy@example.org",
        &auth,
        "",
    );
    assert_eq!(again.status, 404, "{again:?}");
    let del = request(
        &srv.addr,
        "DELETE",
        "/r/app/subscribers?address=bob@example.org",
        &auth,
        "",
    );
    assert_eq!(del.status, 200, "{del:?}");
    assert_eq!(site.sql::<i64>("SELECT count(*) FROM bo_subscriber"), 1);
}

#[test]
fn unsubscribe_get_asks_and_post_unsubscribes() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    let srv = Server::start(&site.app.path, &[], &env);
    let code: String = site.sql("SELECT code FROM bo_subscriber WHERE address = 'ann@example.org'");
    let url = format!("/r/app/unsubscribe/{code}");
    let form = get(&srv.addr, &url);
    assert_eq!(form.status, 200, "{form:?}");
    assert!(form.body.contains("method=\"post\""), "{}", form.body);
    assert!(form.body.contains("ann@example.org"));
    assert_eq!(
        site.sql::<i64>("SELECT donotcall FROM bo_subscriber WHERE address = 'ann@example.org'"),
        0,
        "a GET (a mail scanner following the link) changes nothing"
    );
    // RFC 8058 one-click: a form POST of List-Unsubscribe=One-Click.
    let post = request(
        &srv.addr,
        "POST",
        &url,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "List-Unsubscribe=One-Click",
    );
    assert_eq!(post.status, 200, "{post:?}");
    assert!(post.body.contains("no more email"));
    assert_eq!(
        site.sql::<i64>("SELECT donotcall FROM bo_subscriber WHERE address = 'ann@example.org'"),
        1
    );
    assert_eq!(
        site.sql::<i64>("SELECT donotcall FROM bo_subscriber WHERE address = 'bob@example.org'"),
        0,
        "only the code's holder"
    );
    for bad in ["0123456789abcdef0123456789abcdef", "short", "x'%20OR%201=1"] {
        let r = request(
            &srv.addr,
            "POST",
            &format!("/r/app/unsubscribe/{bad}"),
            &[],
            "",
        );
        assert_eq!(r.status, 404, "{bad}: {r:?}");
    }
}

#[test]
fn unknown_names_and_traversal_get_404_without_paths() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    std::fs::write(env.path("secret.txt"), "top secret").unwrap();
    let srv = Server::start(&site.app.path, &[], &env);
    let dir = env.dir().to_str().unwrap().to_owned();
    for path in [
        "/r/nope",
        "/r/nope/status.json",
        "/r/..%2F..%2Fetc%2Fpasswd/status.json",
        "/r/%2e%2e/status.json",
        "/r/../app",
        "/r/secret/status.json",
        "/r/secret.txt",
        "/r/app%00/status.json",
        "/r/.app",
        "/nothing/here",
    ] {
        let r = get(&srv.addr, path);
        assert!(r.status == 404 || r.status == 400, "{path}: {r:?}");
        assert!(!r.body.contains(&dir), "{path} reveals a path: {}", r.body);
        assert!(!r.body.contains("top secret"));
    }
    let r = get(&srv.addr, "/r/nope/status.json");
    assert_eq!(r.json()["error"], "no repository named \"nope\"");
}

#[test]
fn injections_in_titles_names_and_settings_render_as_text() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    let evil = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>";
    site.app.bo(&[
        "publish",
        "--kind",
        "wiki",
        "--title",
        evil,
        "--author",
        evil,
        "--no-trigger",
    ]);
    site.app.bo(&[
        "subscriber",
        "add",
        "eve@example.org",
        "--verified",
        "--name",
        evil,
    ]);
    site.app.bo(&["setting", "email-subname", evil]);
    site.app.bo(&[
        "hook",
        "add",
        "--command",
        &format!("true {}", evil.replace('\'', "")),
    ]);
    let srv = Server::start(&site.app.path, &[], &env);
    let page = get(&srv.addr, "/r/app");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script"), "{}", page.body);
    assert!(!page.body.contains("<img"), "{}", page.body);
    let code: String = site.sql("SELECT code FROM bo_subscriber WHERE address = 'eve@example.org'");
    let form = get(&srv.addr, &format!("/r/app/unsubscribe/{code}"));
    assert!(form.body.contains("&lt;img src=x"), "{}", form.body);
    assert!(!form.body.contains("<img"), "{}", form.body);
    let index = get(&srv.addr, "/");
    assert!(!index.body.contains("<script") && !index.body.contains("<img"));
}

#[test]
fn secrets_never_appear_in_pages_json_metrics_or_the_log() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    let password = "hunter2-correct-horse-battery";
    let secret = "whsec-0123456789abcdef-SECRET";
    site.app
        .bo(&["setting", "email-send-relay-password", password]);
    site.app.bo(&[
        "webhook",
        "add",
        "http://127.0.0.1:9/hook",
        "--secret",
        secret,
    ]);
    site.app
        .bo(&["publish", "--kind", "wiki", "--title", "x", "--no-trigger"]);
    let srv = Server::start(&site.app.path, &[], &env);
    let a = site.auth();
    let mut seen = String::new();
    for path in ["/", "/r/app", "/r/app/status.json", "/metrics"] {
        seen.push_str(&get(&srv.addr, path).body);
    }
    seen.push_str(
        &request(
            &srv.addr,
            "GET",
            "/r/app/subscribers",
            &[("Authorization", &a)],
            "",
        )
        .body,
    );
    assert!(
        seen.contains("email-send-relay-password"),
        "the setting is listed"
    );
    for s in [password, secret, site.token.as_str()] {
        assert!(!seen.contains(s), "{s} was shown");
        assert!(!srv.log().contains(s), "{s} was logged");
    }
    let stored: String = site.sql("SELECT value FROM config WHERE name = 'backoffice-api-token'");
    assert!(!stored.contains(&site.token), "only a hash is stored");
}

#[test]
fn limits_refuse_big_bodies_big_heads_and_slow_clients() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    // Raw connections send no token: the redacted summary answers them.
    site.app.bo(&["setting", "web-public-summary", "on"]);
    let srv = Server::start(
        &site.app.path,
        &[
            "--max-body",
            "1000",
            "--body-timeout",
            "1",
            "--header-timeout",
            "1",
        ],
        &env,
    );
    let a = site.auth();
    let auth = [("Authorization", a.as_str())];
    let big = format!(r#"{{"kind":"wiki","title":"{}"}}"#, "x".repeat(2000));
    let r = request(&srv.addr, "POST", "/r/app/events", &auth, &big);
    assert_eq!(r.status, 413, "{r:?}");

    // A chunked body over the limit, with no Content-Length to refuse early.
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = "y".repeat(800);
    write!(
        s,
        "POST /r/app/events HTTP/1.1\r\nHost: x\r\nAuthorization: {a}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert_eq!(parse_reply(&raw).status, 413);

    // A head larger than the limit (16 KiB): exactly 16 KiB with no end,
    // so the server reads every byte before it refuses, and its 431 is not
    // lost to a reset (closing a socket with unread bytes in it sends RST,
    // which may discard the reply before the client reads it).
    let start = "GET /r/app HTTP/1.1\r\nHost: x\r\nX-Big: ";
    let huge = format!("{start}{}", "h".repeat(16 * 1024 - start.len()));
    assert_eq!(huge.len(), 16 * 1024);
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(huge.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 431"), "{text:?}");

    // A body that never finishes: 408 after the body timeout.
    let mut slow_body = TcpStream::connect(&srv.addr).unwrap();
    slow_body
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(slow_body, "POST /r/app/events HTTP/1.1\r\nHost: x\r\nAuthorization: {a}\r\nContent-Length: 100\r\n\r\n{{\"kind\"").unwrap();
    // Headers that never finish: closed after the header timeout.
    let mut slow_head = TcpStream::connect(&srv.addr).unwrap();
    slow_head
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow_head
        .write_all(b"GET /r/app HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // An idle keep-alive connection after one request: closed too.
    let mut idle = TcpStream::connect(&srv.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    idle.write_all(b"GET /r/app/status.json HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();

    // Meanwhile the server answers everyone else at once.
    let t0 = Instant::now();
    for _ in 0..20 {
        assert_eq!(get(&srv.addr, "/r/app/status.json").status, 200);
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    let t0 = Instant::now();
    let mut raw = Vec::new();
    let _ = slow_body.read_to_end(&mut raw);
    assert_eq!(
        parse_reply(&raw).status,
        408,
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let mut raw = Vec::new();
    let n = slow_head.read_to_end(&mut raw);
    assert!(
        n.is_ok(),
        "closed by the server, not by our read timeout: {n:?}"
    );
    let mut raw = Vec::new();
    let n = idle.read_to_end(&mut raw);
    assert!(n.is_ok(), "the idle connection was closed: {n:?}");
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
}

/// The server keeps its check's answer "nothing due" while nothing is
/// committed (issue 13). An event another process publishes with plain
/// SQL, which starts nothing itself, is still found by the check after the
/// server's next request and alerted, in both journal modes.
#[test]
fn a_kept_answer_never_hides_what_another_process_publishes() {
    for wal in [false, true] {
        let env = Env::new();
        let site = Site::new(&env, "app");
        if wal {
            let mode: String = site.sql("PRAGMA journal_mode=WAL");
            assert_eq!(mode, "wal");
        }
        let srv = Server::start(&site.app.path, &[], &env);
        // Two checks a second apart (read-only requests check at most once
        // a second): the first reads and keeps "nothing due", the second is
        // answered from it.
        for _ in 0..2 {
            assert_eq!(get(&srv.addr, "/r/app/status.json").status, 200);
            std::thread::sleep(READ_CHECK_GAP);
        }
        assert_eq!(site.mails(), 0, "nothing was due (wal: {wal})");
        // Another process (this test) publishes with plain SQL.
        let conn = rusqlite::Connection::open(&site.app.path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute(
            "INSERT INTO bo_event(kind, title, mtime) VALUES('wiki', 'by plain SQL', strftime('%s','now'))",
            [],
        )
        .unwrap();
        drop(conn);
        assert_eq!(get(&srv.addr, "/r/app/status.json").status, 200);
        assert!(
            wait_until(Duration::from_secs(10), || site.mails() == 2),
            "the check after the next request started the worker (wal: {wal}): {} mails",
            site.mails()
        );
    }
}

/// A little more than `READ_CHECK_EVERY`.
const READ_CHECK_GAP: Duration = Duration::from_millis(1100);

#[test]
fn read_only_traffic_starts_no_worker_and_the_server_leaves_no_zombies() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    let lease_row = || {
        site.sql::<String>(
            "SELECT coalesce((SELECT value FROM config WHERE name = 'backoffice'), '')",
        )
    };
    let lease_before = lease_row();
    let srv = Server::start(&site.app.path, &[], &env);
    let t0 = Instant::now();
    for _ in 0..300 {
        assert_eq!(get(&srv.addr, "/r/app/status.json").status, 200);
    }
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(lease_row(), lease_before, "no worker took the lease");
    assert_eq!(
        srv.metric("backoffice_workers_started_total{repo=\"app\"}"),
        0.0
    );
    // Reads run the check at most once a second (READ_CHECK_EVERY).
    let checks = srv.metric("backoffice_checks_total{repo=\"app\"}");
    assert!(
        checks >= 1.0 && checks <= secs.ceil() + 1.0,
        "{checks} checks in {secs:.1} s of reads"
    );

    // Now with work: events published without a trigger, each followed by
    // a read request whose reply runs the check.
    let a = site.auth();
    let mut worst_zombies = 0;
    for i in 0..6 {
        let body = format!(r#"{{"kind":"wiki","title":"event {i}"}}"#);
        let r = request(
            &srv.addr,
            "POST",
            "/r/app/events",
            &[("Authorization", &a)],
            &body,
        );
        assert_eq!(r.status, 201);
        for _ in 0..20 {
            get(&srv.addr, "/r/app/status.json");
            worst_zombies = worst_zombies.max(zombie_children(srv.pid()).len());
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    assert!(
        wait_until(Duration::from_secs(15), || {
            site.sql::<i64>("SELECT count(*) FROM bo_event WHERE alerted = 0") == 0
                && site.sql::<i64>("SELECT count(*) FROM bo_outbox WHERE state = 'sent'")
                    == site.mails() as i64
        }),
        "every event was alerted and every message written: {} files",
        site.mails()
    );
    let started = srv.metric("backoffice_workers_started_total{repo=\"app\"}");
    assert!(
        (1.0..=12.0).contains(&started),
        "workers started: {started}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || zombie_children(srv.pid())
            .is_empty()),
        "zombies left: {:?}",
        zombie_children(srv.pid())
    );
    assert!(worst_zombies <= 1, "zombies piled up: {worst_zombies}");
}

#[test]
fn a_burst_of_replies_starts_one_worker_not_one_per_reply() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    // WAL, so the writes below commit quickly and their replies come close
    // together.
    assert_eq!(site.sql::<String>("PRAGMA journal_mode=WAL"), "wal");
    site.app.bo(&["subscriber", "add", "carol@example.org"]);
    let code: String =
        site.sql("SELECT code FROM bo_subscriber WHERE address = 'carol@example.org'");
    let srv = Server::start(&site.app.path, &[], &env);
    let started = || srv.metric("backoffice_workers_started_total{repo=\"app\"}");
    let checks = || srv.metric("backoffice_checks_total{repo=\"app\"}");
    let (clients, each) = (16, 30);
    // Several rounds, because the race this is about (checks that all see
    // "needed" before the first of them has spawned its worker) is a
    // matter of milliseconds: without the engine's start claim, a round
    // starts 3 or more workers about half the time.
    for round in 1..=4 {
        let (started0, checks0) = (started(), checks());
        site.app.bo(&[
            "publish",
            "--kind",
            "wiki",
            "--title",
            &format!("burst {round}"),
            "--no-trigger",
        ]);
        // Many clients at once, each sending writes, so every reply runs
        // the check (reads run it at most once a second, and could not show
        // two checks racing). The write is the cheapest there is: the
        // one-click unsubscribe (one UPDATE) of a subscriber who gets no
        // mail, repeated.
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let addr = srv.addr.clone();
                let path = format!("/r/app/unsubscribe/{code}");
                std::thread::spawn(move || {
                    for _ in 0..each {
                        let r = request(&addr, "POST", &path, &[], "");
                        assert_eq!(r.status, 200, "{r:?}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(
            wait_until(Duration::from_secs(10), || site.mails() == 2 * round),
            "round {round}: {} alerts",
            site.mails()
        );
        assert!(
            wait_until(Duration::from_secs(10), || checks() - checks0
                >= f64::from(clients * each)),
            "every write ran the check: {}",
            checks() - checks0
        );
        // One to do the work; perhaps one more on deck if a reply's check
        // ran while the first held the lease with the event unconsumed.
        let n = started() - started0;
        assert!(
            (1.0..=2.0).contains(&n),
            "round {round}: workers started for one event: {n}"
        );
        // The round's workers are gone before the next round starts.
        assert!(wait_until(Duration::from_secs(10), || {
            let l = site.app.bo(&["lease"]);
            l.contains("stateCur:   nobody") && l.contains("stateNext:  nobody")
        }));
    }
}

#[test]
fn repolist_serves_every_sqlite_file_in_a_directory() {
    let env = Env::new();
    let dir = env.path("repos");
    std::fs::create_dir(&dir).unwrap();
    for n in ["one", "two"] {
        rusqlite::Connection::open(dir.join(format!("{n}.db")))
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "not a database").unwrap();
    for name in ["one", "two"] {
        Cmd::backoffice()
            .args(["setting", "-R"])
            .arg(dir.join(format!("{name}.db")))
            .args(["web-public-summary", "on"])
            .output()
            .success();
    }
    let srv = Server::start(&dir, &["--repolist"], &env);
    let index = get(&srv.addr, "/");
    assert!(
        index.body.contains("/r/one") && index.body.contains("/r/two"),
        "{}",
        index.body
    );
    assert!(!index.body.contains("notes"));
    assert_eq!(get(&srv.addr, "/r/two/status.json").status, 200);
    assert_eq!(get(&srv.addr, "/r/notes").status, 404);
    // A repository added later appears without a restart.
    rusqlite::Connection::open(dir.join("three.db"))
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    Cmd::backoffice()
        .args(["setting", "-R"])
        .arg(dir.join("three.db"))
        .args(["web-public-summary", "on"])
        .output()
        .success();
    assert!(wait_until(Duration::from_secs(6), || get(
        &srv.addr,
        "/r/three/status.json"
    )
    .status
        == 200));

    // Without --repolist a directory is refused, with the fix in the message.
    let err = Cmd::backoffice()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg(&dir)
        .output()
        .failure();
    assert!(err.contains("--repolist"), "{err}");
    let err = Cmd::backoffice()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg(dir.join("notes.txt"))
        .output()
        .failure();
    assert!(
        err.contains("not a database") || err.contains("notes.txt"),
        "{err}"
    );
}

/// Runs `backoffice cgi` as a CGI host would: environment and stdin.
pub fn cgi(
    repo: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (String, Duration) {
    let mut cmd = Cmd::backoffice()
        .arg("cgi")
        .env("BACKOFFICE_REPO", repo)
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", "")
        .env("CONTENT_LENGTH", body.len().to_string());
    for (k, v) in headers {
        cmd = cmd.env(k, v);
    }
    if method == "GET" && !headers.iter().any(|(k, _)| *k == "HTTP_AUTHORIZATION") {
        if let Some((_, t)) = tokens_for(repo).into_iter().next() {
            cmd = cmd.env("HTTP_AUTHORIZATION", format!("Bearer {t}"));
        }
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn_with(Stdio::piped(), Stdio::inherit());
    // The program may answer (413) without reading a body that is too big.
    let _ = child.stdin.take().unwrap().write_all(body.as_bytes());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    wait_child(&mut child, Duration::from_secs(20), "backoffice cgi");
    (out, t0.elapsed())
}

#[test]
fn cgi_answers_from_the_environment_and_starts_a_detached_worker() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    let (out, _) = cgi(&site.app.path, "GET", "/r/app/status.json", &[], "");
    assert!(out.starts_with("Status: 200 OK\r\n"), "{out}");
    assert!(
        out.contains("\r\ncontent-type: application/json\r\n"),
        "{out}"
    );
    let body = out.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["repo"], "app");

    let (out, _) = cgi(
        &site.app.path,
        "POST",
        "/r/app/events",
        &[],
        r#"{"kind":"wiki","title":"x"}"#,
    );
    assert!(out.starts_with("Status: 401"), "{out}");
    let a = site.auth();
    // A slow hook makes the worker outlive the request by seconds; the
    // lease time (1 s, counted in whole seconds) passes first, so the work
    // can start at once.
    let hook_out = env.path("hook.out");
    site.app.bo(&[
        "hook",
        "add",
        "--command",
        &format!("sleep 3; cat > {}", hook_out.display()),
    ]);
    std::thread::sleep(Duration::from_millis(2100));
    let (out, took) = cgi(
        &site.app.path,
        "POST",
        "/r/app/events",
        &[
            ("HTTP_AUTHORIZATION", a.as_str()),
            ("CONTENT_TYPE", "application/json"),
        ],
        r#"{"kind":"wiki","title":"over CGI"}"#,
    );
    assert!(out.starts_with("Status: 201"), "{out}");
    assert!(
        took < Duration::from_secs(2),
        "the CGI process waited for the worker: {took:?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || site.mails() == 2),
        "the detached worker sent the alerts: {}",
        site.mails()
    );
    assert!(
        wait_until(Duration::from_secs(10), || hook_out.exists()),
        "the detached worker ran the slow hook after the CGI process exited"
    );

    let big = "x".repeat(2 << 20);
    let (out, _) = cgi(
        &site.app.path,
        "POST",
        "/r/app/events",
        &[("HTTP_AUTHORIZATION", a.as_str())],
        &big,
    );
    assert!(
        out.starts_with("Status: 413"),
        "{}",
        &out[..out.len().min(200)]
    );
    let (out, _) = cgi(&site.app.path, "GET", "/r/other", &[], "");
    assert!(out.starts_with("Status: 404"), "{out}");
    assert!(!out.contains(env.dir().to_str().unwrap()));

    let err = Cmd::backoffice()
        .arg("cgi")
        .env("BACKOFFICE_REPO", &site.app.path)
        .output()
        .failure();
    assert!(err.contains("REQUEST_METHOD"), "{err}");
    let err = Cmd::backoffice()
        .arg("cgi")
        .env("REQUEST_METHOD", "GET")
        .output()
        .failure();
    assert!(err.contains("BACKOFFICE_REPO"), "{err}");
}

#[test]
fn cgi_under_pythons_cgi_server_is_never_held_open_by_the_worker() {
    if !have("python3") {
        return;
    }
    let env = Env::new();
    let site = Site::new(&env, "app");
    // Python's server is asked without a token: the redacted summary.
    site.app.bo(&["setting", "web-public-summary", "on"]);
    if crate::harness::is_root() {
        // Python's CGI server runs scripts as `nobody` when it runs as root;
        // they must be able to write the repository and the folders.
        let _ = Cmd::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(env.dir())
            .output();
    }
    // The worker outlives the request by seconds.
    site.app.bo(&[
        "hook",
        "add",
        "--command",
        &format!("sleep 4; cat > {}", env.path("hook.out").display()),
    ]);
    site.app.bo(&[
        "publish",
        "--kind",
        "wiki",
        "--title",
        "waiting",
        "--no-trigger",
    ]);
    let root = env.path("www");
    std::fs::create_dir_all(root.join("cgi-bin")).unwrap();
    let script = root.join("cgi-bin/bo");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nBACKOFFICE_REPO='{}' exec '{}' cgi\n",
            site.app.path.display(),
            crate::harness::backoffice_bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut py = Cmd::new("python3")
        .args([
            "-u",
            "-m",
            "http.server",
            "--cgi",
            "--bind",
            "127.0.0.1",
            "0",
        ])
        .current_dir(&root)
        .spawn_with(Stdio::piped(), Stdio::null());
    let mut line = String::new();
    BufReader::new(py.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .split(" port ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
        .to_owned();
    let addr = format!("127.0.0.1:{port}");
    let t0 = Instant::now();
    let r = get(&addr, "/cgi-bin/bo/r/app/status.json");
    let took = t0.elapsed();
    let _ = py.kill();
    let _ = py.wait();
    // Python's server writes its own status line and passes ours through.
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.head.contains("Status: 200 OK"), "{}", r.head);
    assert_eq!(r.json()["repo"], "app");
    assert!(
        took < Duration::from_secs(3),
        "the reply waited for the worker: {took:?}"
    );
    assert!(
        wait_until(Duration::from_secs(15), || env.path("hook.out").exists()),
        "the detached worker ran the hook after the reply"
    );
    assert!(wait_until(Duration::from_secs(10), || site.mails() == 2));
}

#[test]
fn the_demo_serves_a_repository_and_an_event_becomes_alert_files() {
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
    let base = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("status page"))
        .map(|u| {
            u.trim()
                .trim_end_matches("/r/demo")
                .trim_start_matches("http://")
                .to_owned()
        })
        .unwrap_or_else(|| panic!("no URL in {text}"));
    assert!(
        text.contains("curl -H \"Authorization: Bearer $(cat "),
        "{text}"
    );
    let mails = || {
        std::fs::read_dir(dir.join("mail"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                    .count()
            })
            .unwrap_or(0)
    };
    // The seeded events: one alert to Alice (all three), one to Bob (his
    // two kinds); Carol takes a digest.
    assert!(
        wait_until(Duration::from_secs(10), || mails() == 2),
        "{}",
        mails()
    );
    let token = std::fs::read_to_string(dir.join("token")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let r = request(
        &base,
        "POST",
        "/r/demo/events",
        &[("Authorization", auth.as_str())],
        r#"{"kind":"checkin","title":"Hello from curl"}"#,
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert!(
        wait_until(Duration::from_secs(10), || mails() == 4),
        "{}",
        mails()
    );
    remember_server(&base, vec![("demo".into(), token.trim().to_owned())]);
    let page = get(&base, "/r/demo");
    assert!(page.body.contains("Hello from curl"), "{}", page.body);
    assert!(page.body.contains("alerts"), "the run log is on the page");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let st = wait_child(&mut child, Duration::from_secs(10), "demo");
    assert!(st.success(), "{st:?}");
}

/// Many clients publishing at once into a rollback-journal repository (the
/// default mode): each POST takes the write lock up front and waits for it,
/// so none fails with 500 "database is locked"; one that still cannot get
/// the lock in time is told 503 with `Retry-After`.
#[test]
fn concurrent_publishing_in_rollback_mode_never_fails_with_500() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    let mode: String = site.sql("PRAGMA journal_mode");
    assert_eq!(mode, "delete", "the repository is in rollback-journal mode");
    let srv = Server::start(&site.app.path, &[], &env);
    let auth = site.auth();
    let (threads, each) = (100, 10);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let addr = srv.addr.clone();
            let auth = auth.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for i in 0..each {
                    let body = format!(r#"{{"kind":"load","title":"event {t}-{i}"}}"#);
                    let r = request(
                        &addr,
                        "POST",
                        "/r/app/events",
                        &[("Authorization", &auth)],
                        &body,
                    );
                    out.push((r.status, r.header("retry-after"), r.body));
                }
                out
            })
        })
        .collect();
    let replies: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let created = replies.iter().filter(|r| r.0 == 201).count();
    let busy: Vec<_> = replies.iter().filter(|r| r.0 == 503).collect();
    let other: Vec<_> = replies
        .iter()
        .filter(|r| r.0 != 201 && r.0 != 503)
        .collect();
    eprintln!(
        "{} POSTs: {created} created, {} busy (503), {} other",
        replies.len(),
        busy.len(),
        other.len()
    );
    assert!(
        other.is_empty(),
        "{} replies neither 201 nor 503, e.g. {:?}; server log:\n{}",
        other.len(),
        other.first(),
        srv.log()
            .lines()
            .filter(|l| l.contains("ERROR"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    for b in &busy {
        assert!(b.1.is_some(), "a 503 without Retry-After: {b:?}");
    }
    assert!(created > 0);
    let stored: i64 = site.sql("SELECT count(*) FROM bo_event WHERE kind = 'load'");
    assert_eq!(
        stored as usize, created,
        "every 201 is stored, nothing else"
    );
}

/// Every event field is bounded (the library's one definition, so the CLI
/// refuses the same): over a limit is 400 naming the field, nothing stored.
#[test]
fn event_fields_over_their_limits_get_400_naming_the_field() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    let srv = Server::start(&site.app.path, &[], &env);
    let a = site.auth();
    let auth = [("Authorization", a.as_str())];
    let big_title = "t".repeat(900_000);
    let long_url = format!("https://example.org/{}", "u".repeat(3000));
    let cases = [
        (
            format!(r#"{{"kind":"wiki","title":"x","time":{}}}"#, i64::MAX),
            "time",
        ),
        (
            r#"{"kind":"wiki","title":"x","time":-5}"#.to_owned(),
            "time",
        ),
        (
            format!(r#"{{"kind":"wiki","title":"{big_title}"}}"#),
            "title",
        ),
        (
            format!(r#"{{"kind":"wiki","title":"{}"}}"#, "é".repeat(501)),
            "title",
        ),
        (
            format!(r#"{{"kind":"wiki","title":"x","url":"{long_url}"}}"#),
            "url",
        ),
        (
            format!(
                r#"{{"kind":"wiki","title":"x","author":"{}"}}"#,
                "a".repeat(201)
            ),
            "author",
        ),
        (
            format!(
                r#"{{"kind":"wiki","title":"x","body":"{}"}}"#,
                "b".repeat(300_000)
            ),
            "body",
        ),
    ];
    for (body, field) in &cases {
        let r = request(&srv.addr, "POST", "/r/app/events", &auth, body);
        assert_eq!(r.status, 400, "{field}: {}", r.body);
        let e = r.json()["error"].as_str().unwrap().to_owned();
        assert!(e.contains(field), "{field}: {e}");
    }
    // At the limits: accepted.
    let body = format!(
        r#"{{"kind":"wiki","title":"{}","time":253402300799,"author":"{}"}}"#,
        "é".repeat(500),
        "a".repeat(200)
    );
    let r = request(&srv.addr, "POST", "/r/app/events", &auth, &body);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(site.sql::<i64>("SELECT count(*) FROM bo_event"), 1);
    // The command line refuses the same, naming the field.
    let huge = env.path("huge-body");
    std::fs::write(&huge, "b".repeat(300_000)).unwrap();
    let err = Cmd::backoffice()
        .args(["publish", "--kind", "wiki", "--title", "x", "--no-trigger"])
        .arg("--body-file")
        .arg(&huge)
        .args(["-R", site.app.r()])
        .output()
        .failure();
    assert!(err.contains("body") && err.contains("too long"), "{err}");
    assert_eq!(site.sql::<i64>("SELECT count(*) FROM bo_event"), 1);
}

/// A TCP connection to `addr` from the loopback address `from` (all of
/// 127.0.0.0/8 is loopback, so one host can play several clients).
fn connect_from(from: [u8; 4], addr: &str) -> std::io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketType};
    let to: std::net::SocketAddr = addr.parse().expect("an address");
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None)?;
    let src = std::net::SocketAddr::from((from, 0));
    rustix::net::bind(&fd, &src)?;
    rustix::net::connect(&fd, &to)?;
    Ok(TcpStream::from(fd))
}

/// One GET from the loopback address `from`; the status, or why none came
/// within `limit`.
fn probe_from(from: [u8; 4], addr: &str, path: &str, limit: Duration) -> Result<u16, String> {
    let mut s = connect_from(from, addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    if raw.is_empty() {
        return Err("closed without a reply".into());
    }
    Ok(parse_reply(&raw).status)
}

/// Idle connections from one client cannot lock others out: each client
/// address gets a bounded share of the connections, and near the cap the
/// server sheds idle connections so a new client is served at once rather
/// than after the header timeout.
#[test]
fn idle_connections_from_one_client_do_not_lock_out_another() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    // Raw probes send no token: the redacted summary answers them.
    site.app.bo(&["setting", "web-public-summary", "on"]);
    let srv = Server::start(
        &site.app.path,
        &[
            "--max-connections",
            "40",
            "--max-connections-per-client",
            "16",
            "--header-timeout",
            "60",
        ],
        &env,
    );
    let limit = Duration::from_secs(10);
    // One client opens 200 idle connections (more than the cap).
    let mut hog = Vec::new();
    for _ in 0..200 {
        match connect_from([127, 0, 0, 1], &srv.addr) {
            Ok(s) => hog.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    let mut idle = Vec::new();
    for i in 0..3 {
        let r = probe_from([127, 0, 0, 2], &srv.addr, "/r/app/status.json", limit);
        assert_eq!(r, Ok(200), "probe {i} from another client, one hog");
    }
    // Three clients, each within its share, together at the cap: the
    // server sheds idle connections, and a fourth client is served.
    for from in [[127, 0, 0, 3], [127, 0, 0, 4]] {
        for _ in 0..16 {
            idle.push(connect_from(from, &srv.addr).expect("connect"));
        }
    }
    for i in 0..3 {
        let r = probe_from([127, 0, 0, 2], &srv.addr, "/r/app/status.json", limit);
        assert_eq!(r, Ok(200), "probe {i} from another client, at the cap");
    }
    // The hog's connections beyond its share were refused with a 503, not
    // queued; the 16 in its share, idle since before the server came near
    // its cap, were shed then (closed, long before the 60 s header
    // timeout).
    let (mut refused, mut shed) = (0, 0);
    for mut s in hog {
        s.set_read_timeout(Some(limit)).unwrap();
        let mut raw = Vec::new();
        match s.read_to_end(&mut raw) {
            Ok(_) if raw.starts_with(b"HTTP/1.1 503") => refused += 1,
            Ok(_) if raw.is_empty() => shed += 1,
            other => panic!(
                "a hog's connection: {other:?} {:?}",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
    assert_eq!((refused, shed), (184, 16));
    let log = srv.log();
    assert!(log.contains("connections from 127.0.0.1"), "{log}");
    drop(idle);
}

/// `serve` as a child process under descriptor limits (`ulimit -n`, soft
/// and hard, set by the shell that then becomes the server).
fn start_with_nofile(path: &Path, args: &[&str], (soft, hard): (u32, u32), env: &Env) -> Server {
    let cmd = Cmd::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\" serve \"$@\""
        ))
        .arg(crate::harness::backoffice_bin())
        .arg(path)
        .args(["--listen", "127.0.0.1:0"])
        .args(args);
    Server::launch(cmd, env)
}

/// Descriptors a process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// 10,000 repositories under a limit of 1,024 descriptors: a `/metrics`
/// scrape reads every one, and the server keeps a bounded number of
/// connections open (the least recently used are closed), so every
/// repository is up, and the server still answers and accepts afterwards.
#[test]
fn serve_repolist_of_10000_repositories_under_1024_descriptors() {
    let env = Env::new();
    let dir = env.path("repos");
    std::fs::create_dir(&dir).unwrap();
    // One template with the config table already made (so opening writes
    // nothing), copied: quicker than creating 10,000 databases.
    let template = env.path("template.db");
    rusqlite::Connection::open(&template)
        .unwrap()
        .execute_batch(
            "CREATE TABLE config(name TEXT PRIMARY KEY NOT NULL, value CLOB, mtime DATE,
               CHECK( typeof(name)='text' AND length(name)>=1 ));
             CREATE TABLE app(x);
             INSERT INTO config(name, value) VALUES ('web-public-summary', 'on');",
        )
        .unwrap();
    let n = 10_000;
    for i in 0..n {
        std::fs::copy(&template, dir.join(format!("r{i:05}.db"))).unwrap();
    }
    let srv = start_with_nofile(&dir, &["--repolist"], (1024, 1024), &env);
    // The scrape reads 10,000 repositories: in a debug build on a loaded
    // machine, longer than `request`'s 20 s read timeout.
    let m = {
        let mut s = TcpStream::connect(&srv.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(180))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("the scrape's reply");
        parse_reply(&raw)
    };
    assert_eq!(m.status, 200, "{}", m.body);
    let up = m
        .body
        .lines()
        .filter(|l| l.starts_with("backoffice_repository_up{") && l.ends_with(" 1"))
        .count();
    let down: Vec<_> = m
        .body
        .lines()
        .filter(|l| l.starts_with("backoffice_repository_up{") && l.ends_with(" 0"))
        .take(3)
        .collect();
    assert_eq!(up, n, "repositories down, e.g. {down:?}; log:\n{}", {
        let log = srv.log();
        log.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    });
    let fds = open_fds(srv.pid());
    eprintln!("after a scrape of {n} repositories: {fds} descriptors open");
    assert!(fds < 600, "{fds} descriptors held after the scrape");
    // The server still answers, for any repository, on new connections.
    for i in [0, 4999, 9999] {
        let r = get(&srv.addr, &format!("/r/r{i:05}/status.json"));
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert!(
        !srv.log().contains("accept:"),
        "accept failed: {}",
        srv.log()
    );
}

/// The soft descriptor limit is raised to the hard one at start-up.
#[test]
fn serve_raises_its_soft_descriptor_limit_to_the_hard_one() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    let srv = start_with_nofile(&site.app.path, &[], (256, 2048), &env);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", srv.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, ["2048", "2048"], "{line}");
}

/// The POSIX locks process `pid` holds on the file with inode `ino`, from
/// /proc/locks.
fn locks_held(pid: u32, ino: u64) -> usize {
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    text.lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "1: POSIX ADVISORY WRITE PID MAJ:MIN:INODE START END"
            f.len() >= 6
                && f[1] == "POSIX"
                && f[4] == pid.to_string()
                && f[5].rsplit(':').next() == Some(&ino.to_string())
        })
        .count()
}

/// A served repository that appears under a second name (a hard link in
/// the `--repolist` folder) is never opened outside SQLite: closing such a
/// descriptor would drop every POSIX lock this process holds on the file,
/// and another process could then write beside the server's own write.
#[test]
fn an_aliased_repository_is_never_opened_outside_sqlite() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let dir = env.path("repos");
    std::fs::create_dir(&dir).unwrap();
    let app = AppRepo::new(&env, "repos/app.db");
    app.bo(&["setting", "web-public-summary", "on"]);
    let token = app.bo(&["token"]).trim().to_owned();
    let ino = std::fs::metadata(&app.path).unwrap().ino();
    let srv = Server::start(&dir, &["--repolist", "--no-trigger"], &env);
    let started = Instant::now();
    // A reader holds SHARED, so the server's publish below takes RESERVED
    // and then waits (up to its busy timeout) at COMMIT, holding its locks.
    let reader = rusqlite::Connection::open(&app.path).unwrap();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM config;")
        .unwrap();
    // The folder is listed again for an unknown name at most every 2 s
    // (RESCAN_EVERY); start the write once the next listing is allowed.
    std::thread::sleep(Duration::from_millis(2200).saturating_sub(started.elapsed()));
    let addr = srv.addr.clone();
    let auth = format!("Bearer {token}");
    let post = std::thread::spawn(move || {
        request(
            &addr,
            "POST",
            "/r/app/events",
            &[("Authorization", &auth)],
            r#"{"kind":"wiki","title":"during the alias"}"#,
        )
    });
    assert!(
        wait_until(Duration::from_secs(3), || locks_held(srv.pid(), ino) > 0),
        "the server's write holds its locks"
    );
    // The alias appears, and a request for an unknown name lists the folder.
    std::fs::hard_link(&app.path, dir.join("alias.db")).unwrap();
    assert_eq!(get(&srv.addr, "/r/nothing-here").status, 404);
    // The server still holds its write lock: another writer is refused.
    let other = rusqlite::Connection::open(&app.path).unwrap();
    other.busy_timeout(Duration::ZERO).unwrap();
    let second_writer = other.execute_batch("BEGIN IMMEDIATE");
    let still_held = locks_held(srv.pid(), ino);
    if second_writer.is_ok() {
        let _ = other.execute_batch("ROLLBACK");
    }
    reader.execute_batch("COMMIT").unwrap();
    let r = post.join().unwrap();
    assert!(
        second_writer.is_err() && still_held > 0,
        "listing the folder dropped the server's locks on the repository \
         ({still_held} left): a second writer got in beside the server's write"
    );
    assert_eq!(r.status, 201, "{r:?}");
    // The alias is served, and the database is sound.
    assert_eq!(get(&srv.addr, "/r/alias/status.json").status, 200);
    let check: String = rusqlite::Connection::open(&app.path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

/// Issue 10, item 13 on the web front: while another connection holds the
/// repository's lock, the status page and JSON answer 503 with
/// `Retry-After` (nothing is broken; the same request works in a moment),
/// never 500, and nothing is left behind once the lock is gone.
#[test]
fn a_locked_repository_answers_503_on_its_status_routes() {
    let env = Env::new();
    let site = Site::new(&env, "app");
    let srv = Server::start(&site.app.path, &["--no-trigger"], &env);
    // Served once, so the pooled connection exists before the lock.
    assert_eq!(get(&srv.addr, "/r/app/status.json").status, 200);
    let holder = rusqlite::Connection::open(&site.app.path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for path in ["/r/app/status.json", "/r/app"] {
        let r = get(&srv.addr, path);
        assert_eq!(r.status, 503, "{path} while locked: {r:?}");
        assert_eq!(r.header("retry-after").as_deref(), Some("1"), "{path}");
        assert!(
            r.body.contains("busy"),
            "{path} says why, not a path: {}",
            r.body
        );
    }
    holder.execute_batch("COMMIT").unwrap();
    assert_eq!(get(&srv.addr, "/r/app/status.json").status, 200);
}
