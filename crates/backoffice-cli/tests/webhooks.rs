//! Webhooks through the real binary against real HTTP receivers on
//! 127.0.0.1: a small keep-alive HTTP/1.1 server written here that checks
//! every signature independently (its own HMAC), and can answer 500, hang
//! past the client's time-out, or not exist at all (refused connections).
//! "Time passing" between runs is simulated by moving `next_attempt`.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{AppRepo, Cmd, Env};

const SECRET: &str = "test-secret-0123456789abcdef";

/// How a receiver treats a request while it still has "bad" answers to give.
#[derive(Clone, Copy, Debug)]
enum Bad {
    /// Answer this status.
    Status(u16),
    /// Read the request, then say nothing for this long and close.
    Hang(Duration),
}

/// One delivery a receiver accepted.
#[derive(Clone, Debug)]
struct Got {
    eventid: i64,
    kind: String,
    delivery: String,
    signature_ok: bool,
    at: Instant,
    json: serde_json::Value,
}

#[derive(Default)]
struct Shared {
    got: Mutex<Vec<Got>>,
    requests: AtomicUsize,
    first_request: Mutex<Option<Instant>>,
    connections: AtomicUsize,
    bad_left: AtomicUsize,
    /// Milliseconds to wait before each 200.
    ok_delay_ms: AtomicUsize,
    stop: AtomicBool,
}

/// A receiver; it stops (and its threads end) when dropped, and in any case
/// within 30 s.
struct Receiver {
    url: String,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Gives `bad_first` bad answers of kind `bad`, then 200s.
    fn start(bad: Bad, bad_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let shared = Arc::new(Shared::default());
        shared.bad_left.store(bad_first, Ordering::SeqCst);
        let sh = shared.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !sh.stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(30) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        sh.connections.fetch_add(1, Ordering::SeqCst);
                        let sh = sh.clone();
                        std::thread::spawn(move || serve(stream, &sh, bad));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Receiver { url, shared }
    }

    fn ok() -> Receiver {
        Receiver::start(Bad::Status(500), 0)
    }

    fn got(&self) -> Vec<Got> {
        self.shared.got.lock().unwrap().clone()
    }

    fn ids(&self) -> Vec<i64> {
        self.got().iter().map(|g| g.eventid).collect()
    }

    fn set_bad(&self, n: usize) {
        self.shared.bad_left.store(n, Ordering::SeqCst);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// One connection: requests one after another (keep-alive) until the
/// client closes, 5 s of silence, or the receiver stops.
fn serve(stream: TcpStream, sh: &Shared, bad: Bad) {
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    while !sh.stop.load(Ordering::SeqCst) {
        let Some(req) = crate::harness::read_http_request(&mut r) else {
            return;
        };
        let header = |name: &str| req.header(name);
        let body = &req.body;
        sh.requests.fetch_add(1, Ordering::SeqCst);
        sh.first_request
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        let is_bad = sh
            .bad_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if is_bad {
            match bad {
                Bad::Hang(d) => {
                    std::thread::sleep(d);
                    return;
                }
                Bad::Status(s) => {
                    let _ = out.write_all(
                        format!("HTTP/1.1 {s} Oops\r\nContent-Length: 4\r\n\r\noops").as_bytes(),
                    );
                    continue;
                }
            }
        }
        let ts = header("x-backoffice-timestamp");
        let mut signed = ts.clone().into_bytes();
        signed.push(b'.');
        signed.extend_from_slice(body);
        let json: serde_json::Value = serde_json::from_slice(body).expect("JSON body");
        let delivery = header("x-backoffice-delivery");
        let kind = header("x-backoffice-event");
        let fresh = ts
            .parse::<i64>()
            .is_ok_and(|t| (t - backoffice::clock::now()).abs() < 60);
        let signature_ok = fresh
            && header("x-backoffice-signature")
                == format!("sha256={}", crate::harness::hmac_hex(SECRET, &signed))
            && json["delivery"] == delivery.as_str()
            && json["kind"] == kind.as_str()
            && header("content-type") == "application/json";
        sh.got.lock().unwrap().push(Got {
            eventid: json["eventid"].as_i64().unwrap(),
            kind,
            delivery,
            signature_ok,
            at: Instant::now(),
            json,
        });
        std::thread::sleep(Duration::from_millis(
            sh.ok_delay_ms.load(Ordering::SeqCst) as u64
        ));
        if out
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// A repository for webhook tests.
struct Repo {
    app: AppRepo,
}

impl std::ops::Deref for Repo {
    type Target = AppRepo;
    fn deref(&self) -> &AppRepo {
        &self.app
    }
}

impl Repo {
    fn new(env: &Env) -> Repo {
        let r = Repo {
            app: AppRepo::new(env, "app.db"),
        };
        r.bo(&["setting", "backoffice-lease-time", "1"]);
        r
    }

    /// Adds an endpoint; returns its id.
    fn add(&self, url: &str, kinds: &str) -> i64 {
        let out = self.bo(&["webhook", "add", url, "--secret", SECRET, "--kinds", kinds]);
        assert!(!out.contains(SECRET), "{out}");
        out.trim_start_matches("added:")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn publish(&self, kind: &str, title: &str) {
        self.bo(&["publish", "--kind", kind, "--title", title, "--no-trigger"]);
    }

    /// Many events at once, in one transaction (for the benchmark).
    fn publish_many(&self, n: usize) {
        let mut c = rusqlite::Connection::open(&self.path).unwrap();
        let tx = c.transaction().unwrap();
        for i in 0..n {
            backoffice::events::publish(
                &tx,
                &backoffice::events::Event {
                    kind: "checkin".into(),
                    title: format!("Check-in {i}"),
                    body: "Some details about it.".into(),
                    url: Some(format!("https://example.org/info/{i}")),
                    author: Some("ann".into()),
                    time: None,
                },
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    /// One manual worker run; its exit status is not asserted (a run where
    /// every endpoint failed reports the task as failed).
    fn run(&self) -> Duration {
        Cmd::backoffice()
            .args(["run", "--nolease", self.r()])
            .output()
            .elapsed
    }

    /// Lets every endpoint's next attempt come now.
    fn time_passes(&self) {
        self.sql_exec("UPDATE bo_ledger SET next_attempt = 0 WHERE task = 'webhooks'");
    }

    fn sql_exec(&self, q: &str) {
        rusqlite::Connection::open(&self.path)
            .unwrap()
            .execute_batch(q)
            .unwrap();
    }

    fn sql<T: rusqlite::types::FromSql>(&self, q: &str) -> T {
        rusqlite::Connection::open(&self.path)
            .unwrap()
            .query_row(q, [], |r| r.get(0))
            .unwrap()
    }

    fn event_ids(&self, kind: Option<&str>) -> Vec<i64> {
        let c = rusqlite::Connection::open(&self.path).unwrap();
        let mut s = c
            .prepare("SELECT eventid FROM bo_event WHERE ?1 IS NULL OR kind = ?1 ORDER BY eventid")
            .unwrap();
        s.query_map([kind], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

#[test]
fn deliveries_arrive_in_order_signed_and_filtered_by_kind() {
    let env = Env::new();
    let repo = Repo::new(&env);
    // Published before any endpoint exists: not delivered.
    repo.publish("wiki", "Before");
    let all = Receiver::ok();
    let wiki = Receiver::ok();
    let a = repo.add(&all.url, "*");
    let w = repo.add(&wiki.url, "wiki");
    for i in 0..6 {
        let kind = if i % 2 == 0 { "checkin" } else { "wiki" };
        repo.publish(kind, &format!("Event {i} $(touch /tmp/x) `id`; \"quoted\""));
    }
    repo.run();
    let events = repo.event_ids(None);
    assert_eq!(all.ids(), events[1..].to_vec());
    let wiki_events: Vec<i64> = repo.event_ids(Some("wiki"))[1..].to_vec();
    assert_eq!(wiki.ids(), wiki_events);
    for g in all.got().iter().chain(wiki.got().iter()) {
        assert!(g.signature_ok, "{g:?}");
    }
    let ds: Vec<String> = all.got().iter().map(|g| g.delivery.clone()).collect();
    // Every delivery id distinct (not only from its neighbour).
    let unique: std::collections::HashSet<&String> = ds.iter().collect();
    assert_eq!(unique.len(), ds.len(), "{ds:?}");
    assert!(all.got().iter().any(|g| g.kind == "checkin"));
    // The documented body.
    let j = &all.got()[0].json;
    let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "author", "body", "delivery", "eventid", "kind", "time", "title", "url"
        ],
        "{j}"
    );
    assert!(
        j["title"].as_str().unwrap().starts_with("Event 0 $(touch"),
        "{j}"
    );
    assert!(j["time"].as_i64().unwrap() > 1_700_000_000, "{j}");
    // Both cursors are at the newest event (the wiki endpoint's moved past
    // the check-ins), so nothing is due any more.
    let newest = *events.last().unwrap();
    assert_eq!(
        repo.sql::<i64>(
            "SELECT count(*) FROM bo_ledger
             WHERE task = 'webhooks' AND cursor = (SELECT max(eventid) FROM bo_event)"
        ),
        2
    );
    assert_eq!(
        newest,
        repo.sql::<i64>("SELECT max(cursor) FROM bo_ledger WHERE task = 'webhooks'")
    );
    let status = repo.bo(&["status"]);
    assert!(
        status.contains("webhooks: 2 active (0 with events"),
        "{status}"
    );
    // Keep-alive: one connection per endpoint for the whole run.
    assert_eq!(all.shared.connections.load(Ordering::SeqCst), 1);
    // The test delivery is signed too and says its status.
    let out = repo.bo(&["webhook", "test", &a.to_string()]);
    assert_eq!(out.trim(), "HTTP 200");
    let t = all.got().last().unwrap().clone();
    assert_eq!(
        (t.kind.as_str(), t.eventid, t.signature_ok),
        ("test", 0, true)
    );
    // Remove; the other stays.
    repo.bo(&["webhook", "remove", &a.to_string()]);
    let list = repo.bo(&["webhook", "list"]);
    assert!(
        list.contains(&wiki.url) && !list.contains(&all.url),
        "{list}"
    );
    assert!(list.contains(&format!("{:>4}", w)), "{list}");
}

#[test]
fn failing_hanging_and_refusing_endpoints_get_everything_in_order_in_the_end() {
    let env = Env::new();
    let repo = Repo::new(&env);
    repo.bo(&["setting", "webhook-timeout", "1"]);
    let failing = Receiver::start(Bad::Status(500), 3);
    let hanging = Receiver::start(Bad::Hang(Duration::from_secs(3)), 1);
    // A port nobody listens on: connections are refused.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    let f = repo.add(&failing.url, "*");
    let h = repo.add(&hanging.url, "*");
    let c = repo.add(&closed, "*");
    for i in 0..8 {
        repo.publish("wiki", &format!("Event {i}"));
    }
    let events = repo.event_ids(None);
    repo.run();
    // Everyone failed once; the failures and reasons are recorded, with a
    // later next attempt.
    let now = backoffice::clock::now();
    for (id, reason) in [(f, "HTTP 500"), (h, "timed out"), (c, "onnection refused")] {
        let (failures, next, err): (i64, i64, String) = rusqlite::Connection::open(&repo.path)
            .unwrap()
            .query_row(
                "SELECT failures, next_attempt, last_error FROM bo_ledger
                 WHERE task = 'webhooks' AND target = ?1",
                [id.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(failures, 1, "#{id}: {err}");
        assert!(next >= now + 50, "#{id}: next attempt {next}, now {now}");
        assert!(err.contains(reason), "#{id}: {err}");
    }
    let status = repo.bo(&["status"]);
    assert!(status.contains("failing (1 in a row"), "{status}");
    assert!(!status.contains(SECRET), "{status}");
    // Not due yet: a run now delivers nothing.
    repo.run();
    assert!(failing.ids().is_empty() && hanging.ids().is_empty());
    // The refusing endpoint comes up (at a new address).
    let revived = Receiver::ok();
    repo.sql_exec(&format!(
        "UPDATE bo_webhook SET url = '{}' WHERE id = {c}",
        revived.url
    ));
    for _ in 0..4 {
        repo.time_passes();
        repo.run();
        // More events keep arriving meanwhile.
    }
    repo.publish("wiki", "Late");
    repo.time_passes();
    repo.run();
    let events: Vec<i64> = events
        .into_iter()
        .chain(repo.event_ids(None).last().copied())
        .collect();
    for (name, r) in [
        ("failing", &failing),
        ("hanging", &hanging),
        ("revived", &revived),
    ] {
        assert_eq!(r.ids(), events, "{name}");
        assert!(r.got().iter().all(|g| g.signature_ok), "{name}");
    }
    assert_eq!(
        repo.sql::<i64>(
            "SELECT count(*) FROM bo_ledger
             WHERE task = 'webhooks' AND failures = 0 AND last_error IS NULL"
        ),
        3
    );
}

#[test]
fn a_hanging_endpoint_does_not_delay_a_healthy_one() {
    let env = Env::new();
    let repo = Repo::new(&env);
    repo.bo(&["setting", "webhook-timeout", "2"]);
    let hanging = Receiver::start(Bad::Hang(Duration::from_secs(6)), 1000);
    let healthy = Receiver::ok();
    // The hanging endpoint comes first in the table.
    repo.add(&hanging.url, "*");
    repo.add(&healthy.url, "*");
    for i in 0..20 {
        repo.publish("wiki", &format!("Event {i}"));
    }
    let took = repo.run();
    assert_eq!(healthy.ids(), repo.event_ids(None));
    // All 20 arrived before the hanging endpoint's first request had even
    // timed out (2 s), whatever the machine's load at start-up.
    let hang_start = hanging.shared.first_request.lock().unwrap().unwrap();
    let last = healthy.got().last().unwrap().at;
    let after = last.saturating_duration_since(hang_start);
    assert!(
        after < Duration::from_millis(1900),
        "the healthy endpoint's last delivery came {after:?} after the hanging request"
    );
    // The run itself waited for the hanging one's time-out, no longer.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(hanging.ids().is_empty());
}

#[test]
fn an_endpoint_failing_max_attempts_times_is_dead_with_its_reason_until_retried() {
    let env = Env::new();
    let repo = Repo::new(&env);
    repo.bo(&["setting", "webhook-max-attempts", "3"]);
    let r = Receiver::start(Bad::Status(503), 1000);
    let id = repo.add(&r.url, "*");
    repo.publish("ticket", "Ticket 1");
    repo.publish("ticket", "Ticket 2");
    for _ in 0..3 {
        repo.time_passes();
        repo.run();
    }
    assert_eq!(r.shared.requests.load(Ordering::SeqCst), 3);
    assert_eq!(repo.sql::<String>("SELECT state FROM bo_webhook"), "dead");
    // Dead: no more attempts, even when its time comes.
    repo.time_passes();
    repo.run();
    assert_eq!(r.shared.requests.load(Ordering::SeqCst), 3);
    let status = repo.bo(&["status"]);
    assert!(
        status.contains(&format!("webhook #{id} {} is dead after 3 failures", r.url))
            && status.contains("HTTP 503"),
        "{status}"
    );
    let json = repo.bo(&["status", "--json"]);
    let list = repo.bo(&["webhook", "list"]);
    let list_json = repo.bo(&["webhook", "list", "--json"]);
    for out in [&status, &json, &list, &list_json] {
        assert!(
            !out.contains(SECRET) && !out.contains(&SECRET[..10]),
            "{out}"
        );
    }
    assert!(
        list.contains("secret test****") && list.contains("dead"),
        "{list}"
    );
    // The operator fixes the receiver and retries: everything arrives, in order.
    r.set_bad(0);
    repo.bo(&["webhook", "retry", &id.to_string()]);
    repo.run();
    assert_eq!(r.ids(), repo.event_ids(None));
    let status = repo.bo(&["status"]);
    assert!(!status.contains("dead after"), "{status}");
}

#[test]
fn a_worker_killed_mid_run_loses_nothing_and_resends_at_most_one_delivery() {
    let env = Env::new();
    let repo = Repo::new(&env);
    let r = Receiver::ok();
    r.shared.ok_delay_ms.store(5, Ordering::SeqCst);
    repo.add(&r.url, "*");
    repo.publish_many(200);
    let mut worker = Cmd::backoffice()
        .args(["run", "--nolease", repo.r()])
        .spawn();
    let got_some = crate::harness::wait_until(Duration::from_secs(20), || r.ids().len() >= 75);
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert!(got_some, "only {} deliveries", r.ids().len());
    let before = r.ids().len();
    assert!(before < 200, "the worker finished before it was killed");
    repo.run();
    let got = r.got();
    let events = repo.event_ids(None);
    // Every event arrived; the only repeat is the one delivery that was in
    // flight when the worker died, with the same delivery id.
    let mut first: Vec<i64> = Vec::new();
    let mut restarts = 0;
    for (i, g) in got.iter().enumerate() {
        if i > 0 && g.eventid <= got[i - 1].eventid {
            restarts += 1;
            let resent = got[i - 1].eventid - g.eventid + 1;
            assert!(resent <= 1, "{resent} deliveries sent twice");
            let earlier = got[..i].iter().find(|e| e.eventid == g.eventid).unwrap();
            assert_eq!(earlier.delivery, g.delivery);
        }
        if !first.contains(&g.eventid) {
            first.push(g.eventid);
        }
        assert!(g.signature_ok);
    }
    assert!(restarts <= 1, "{restarts} restarts");
    assert_eq!(first, events);
}

#[test]
fn redirects_are_failures_unless_the_setting_allows_them() {
    let env = Env::new();
    let repo = Repo::new(&env);
    let r = Receiver::start(Bad::Status(302), 1);
    repo.add(&r.url, "*");
    repo.publish("wiki", "Moved?");
    repo.run();
    assert!(r.ids().is_empty());
    let err: String = repo.sql("SELECT last_error FROM bo_ledger WHERE task = 'webhooks'");
    assert!(
        err.contains("HTTP 302") && err.contains("webhook-follow-redirects"),
        "{err}"
    );
    repo.time_passes();
    repo.run();
    assert_eq!(r.ids(), repo.event_ids(None));
}

#[test]
fn bad_urls_and_short_secrets_are_refused() {
    let env = Env::new();
    let repo = Repo::new(&env);
    for url in ["ftp://example.org/", "example.org/hook", "http://"] {
        let err = Cmd::backoffice()
            .args(["webhook", "add", url, "--secret", SECRET, "-R", repo.r()])
            .output()
            .failure();
        assert!(err.contains("bad webhook URL"), "{err}");
    }
    let err = Cmd::backoffice()
        .args([
            "webhook",
            "add",
            "http://127.0.0.1:1/",
            "--secret",
            "short",
            "-R",
            repo.r(),
        ])
        .output()
        .failure();
    assert!(err.contains("at least 16"), "{err}");
}

/// Deliveries per second to a local keep-alive receiver. Run with
/// `cargo test --release -p backoffice-cli --test integration bench_webhook -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_webhook_deliveries_per_second() {
    let env = Env::new();
    let repo = Repo::new(&env);
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let r = Receiver::ok();
    repo.add(&r.url, "*");
    repo.publish_many(n);
    let took = match std::env::var("BENCH_WRAP") {
        // To see where the time goes, e.g. BENCH_WRAP="strace -c -f" or
        // BENCH_WRAP="perf record -g -o /tmp/webhooks.perf".
        Ok(wrap) => {
            let mut w = wrap.split_whitespace();
            let done = Cmd::new(w.next().unwrap())
                .args(w)
                .arg(crate::harness::backoffice_bin())
                .args(["run", "--nolease", repo.r()])
                .output();
            eprintln!("{}", done.stderr());
            done.elapsed
        }
        Err(_) => repo.run(),
    };
    assert_eq!(r.ids().len(), n);
    assert!(r.got().iter().all(|g| g.signature_ok));
    eprintln!(
        "{n} deliveries to one keep-alive endpoint in {took:?} (whole `backoffice run` process): {:.0}/s, {} connection(s)",
        n as f64 / took.as_secs_f64(),
        r.shared.connections.load(Ordering::SeqCst)
    );
    // Four endpoints in parallel.
    let env = Env::new();
    let repo = Repo::new(&env);
    let rs: Vec<Receiver> = (0..4).map(|_| Receiver::ok()).collect();
    for r in &rs {
        repo.add(&r.url, "*");
    }
    repo.publish_many(n / 4);
    let took = repo.run();
    for r in &rs {
        assert_eq!(r.ids().len(), n / 4);
    }
    eprintln!(
        "{} deliveries to 4 endpoints in parallel in {took:?}: {:.0}/s",
        n,
        n as f64 / took.as_secs_f64()
    );
}

/// Issue 10 item 8: while one endpoint hangs, a healthy one keeps getting
/// what is published during the run — it does not wait for the hanging
/// request to time out, nor for the next run.
#[test]
fn events_published_while_an_endpoint_hangs_reach_a_healthy_one_at_once() {
    let env = Env::new();
    let repo = Repo::new(&env);
    // Generous, so a loaded machine has time to publish while it hangs.
    repo.bo(&["setting", "webhook-timeout", "5"]);
    let hanging = Receiver::start(Bad::Hang(Duration::from_secs(10)), 1000);
    let healthy = Receiver::ok();
    repo.add(&hanging.url, "*");
    repo.add(&healthy.url, "*");
    for i in 0..3 {
        repo.publish("wiki", &format!("Event {i}"));
    }
    let mut worker = Cmd::backoffice()
        .args(["run", "--nolease", repo.r()])
        .spawn();
    let first = crate::harness::wait_until(Duration::from_secs(20), || {
        healthy.ids().len() == 3 && hanging.shared.first_request.lock().unwrap().is_some()
    });
    if !first {
        crate::harness::kill(worker);
        panic!("the first deliveries did not happen");
    }
    repo.publish("wiki", "Late");
    crate::harness::wait_child(&mut worker, Duration::from_secs(30), "the worker");
    assert_eq!(
        healthy.ids(),
        repo.event_ids(None),
        "the event published during the run waited for a later run"
    );
    let hang_start = hanging.shared.first_request.lock().unwrap().unwrap();
    let late = healthy.got().last().unwrap().at;
    assert!(
        late.saturating_duration_since(hang_start) < Duration::from_secs(5),
        "the late event arrived only after the hanging request timed out"
    );
    assert!(hanging.ids().is_empty());
}

/// Issue 10 item 21: `webhook retry` made while a run's request to that
/// endpoint is in flight is not undone by the run's stale failure count
/// (which made the endpoint dead again).
#[test]
fn an_operators_retry_during_a_run_is_not_undone_by_it() {
    let env = Env::new();
    let repo = Repo::new(&env);
    repo.bo(&["setting", "webhook-timeout", "4"]);
    repo.bo(&["setting", "webhook-max-attempts", "2"]);
    let r = Receiver::start(Bad::Hang(Duration::from_secs(8)), 1000);
    let id = repo.add(&r.url, "*");
    repo.publish("wiki", "One");
    // One failure already: the next would make it dead.
    repo.sql_exec(
        "UPDATE bo_ledger SET failures = 1, last_error = 'HTTP 500' WHERE task = 'webhooks'",
    );
    let mut worker = Cmd::backoffice()
        .args(["run", "--nolease", repo.r()])
        .spawn();
    let asked = crate::harness::wait_until(Duration::from_secs(20), || {
        r.shared.first_request.lock().unwrap().is_some()
    });
    if !asked {
        crate::harness::kill(worker);
        panic!("no request was made");
    }
    // The operator's retry, by another process, while the request hangs.
    repo.bo(&["webhook", "retry", &id.to_string()]);
    crate::harness::wait_child(&mut worker, Duration::from_secs(30), "the worker");
    let (state, failures): (String, i64) = rusqlite::Connection::open(&repo.path)
        .unwrap()
        .query_row(
            "SELECT w.state, l.failures FROM bo_webhook w
             JOIN bo_ledger l ON l.task = 'webhooks' AND l.target = w.id",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (state.as_str(), failures),
        ("active", 1),
        "the run overwrote the operator's retry"
    );
}

/// Issue 10 item 3: a copy of the repository (`cp app.db other.db`) has the
/// original's endpoints and event ids, but never gives the same delivery id
/// to a different event; a repeat of one event keeps its id.
#[test]
fn a_copy_of_the_repository_never_reuses_a_delivery_id_for_another_event() {
    let env = Env::new();
    let repo = Repo::new(&env);
    let r = Receiver::ok();
    repo.add(&r.url, "*");
    repo.publish("wiki", "Before the copy");
    repo.run();
    let other = env.path("other.db");
    std::fs::copy(&repo.path, &other).unwrap();
    let copy = AppRepo { path: other };
    repo.publish("wiki", "In the original");
    copy.bo(&[
        "publish",
        "--kind",
        "wiki",
        "--title",
        "In the copy",
        "--no-trigger",
    ]);
    repo.run();
    Cmd::backoffice()
        .args(["run", "--nolease", copy.r()])
        .output();
    // The copy's endpoint re-sends nothing old (same cursor); each title's
    // deliveries carry their own id, never another title's.
    let mut by_id: std::collections::HashMap<String, String> = Default::default();
    for g in r.got() {
        let title = g.json["title"].as_str().unwrap().to_owned();
        if let Some(t) = by_id.insert(g.delivery.clone(), title.clone()) {
            assert_eq!(t, title, "delivery id {} used for two events", g.delivery);
        }
    }
    assert_eq!(by_id.len(), 3, "{by_id:?}");
}

/// Issue 11 item 4: a repository whose endpoints were written by release
/// 0.1.0 (retry state in `bo_webhook`'s own columns), upgraded by several
/// processes at once: each succeeds, every endpoint reads exactly as before
/// (`webhook list --json` the same), the old columns are gone.
#[test]
fn processes_upgrading_a_0_1_0_repository_at_once_lose_nothing() {
    let env = Env::new();
    let repo = Repo::new(&env);
    for i in 0..3 {
        repo.publish("wiki", &format!("Event {i}"));
    }
    repo.sql_exec(&format!(
        "CREATE TABLE bo_webhook(
           id INTEGER PRIMARY KEY AUTOINCREMENT,
           url TEXT NOT NULL,
           secret TEXT NOT NULL,
           kinds TEXT NOT NULL DEFAULT '*',
           cursor INTEGER NOT NULL DEFAULT 0,
           failures INTEGER NOT NULL DEFAULT 0,
           next_attempt INTEGER NOT NULL DEFAULT 0,
           last_error TEXT,
           state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'dead')),
           delivered INTEGER NOT NULL DEFAULT 0,
           salt TEXT NOT NULL,
           ctime INTEGER NOT NULL
         );
         INSERT INTO bo_webhook VALUES
           (1, 'http://127.0.0.1:9/ok', '{SECRET}', '*', 3, 0, 0, NULL, 'active', 3,
               '1deeea492e92', 1796143951),
           (2, 'http://127.0.0.1:9/down', '{SECRET}', 'wiki', 1, 10, 4102444800,
               'event 2: HTTP 500', 'dead', 1, 'ec59f48c160d', 1796143952);"
    ));
    let before = repo.bo(&["webhook", "list", "--json"]);
    assert!(before.contains("event 2: HTTP 500"), "{before}");
    // Every writing command upgrades first; these change nothing else
    // (endpoint 1 is active, caught up, not failing).
    let procs: Vec<_> = (0..6)
        .map(|_| {
            let r = repo.r().to_owned();
            std::thread::spawn(move || {
                Cmd::backoffice()
                    .args(["webhook", "retry", "1", "-R", &r])
                    .output()
                    .success()
            })
        })
        .collect();
    for p in procs {
        p.join().unwrap();
    }
    assert_eq!(repo.bo(&["webhook", "list", "--json"]), before);
    assert_eq!(
        repo.sql::<i64>(
            "SELECT count(*) FROM pragma_table_info('bo_webhook')
             WHERE name IN ('cursor', 'failures', 'next_attempt', 'last_error')"
        ),
        0
    );
    assert_eq!(
        repo.sql::<i64>("SELECT count(*) FROM bo_ledger WHERE task = 'webhooks'"),
        2
    );
    // And a worker run delivers nothing again, and keeps the dead one dead.
    repo.run();
    assert_eq!(repo.bo(&["webhook", "list", "--json"]), before);
}
