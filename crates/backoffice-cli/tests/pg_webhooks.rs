//! Issue 12, items 1, 2 and 4 for webhooks: endpoints and deliveries on a
//! PostgreSQL repository, against a real HTTP receiver on 127.0.0.1 that
//! checks every signature with its own HMAC.
//!
//! End to end through the real binary (`webhook add|list|test|retry|remove
//! -R URL`, `publish -R URL`, `run URL`, `status URL`), in process for
//! fencing (a run whose lease was taken over records nothing), with many
//! processes at once for the table created on first use, and a
//! measurement (ignored) of deliveries per second through the store.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backoffice::Db;
use backoffice::ledger;

use crate::harness::{Cmd, wait_until};
use crate::pg;

pub(crate) const SECRET: &str = "pg-test-secret-0123456789abcdef";

/// Every wait in these tests gives up after this long.
const DEADLINE: Duration = Duration::from_secs(30);

/// One delivery a receiver accepted.
#[derive(Clone, Debug)]
pub(crate) struct Got {
    eventid: i64,
    title: String,
    pub(crate) delivery: String,
    signature_ok: bool,
}

#[derive(Default)]
struct Shared {
    got: Mutex<Vec<Got>>,
    requests: AtomicUsize,
    connections: AtomicUsize,
    /// Requests still to answer 500.
    bad_left: AtomicUsize,
    stop: AtomicBool,
}

/// A keep-alive HTTP/1.1 receiver on 127.0.0.1; it stops when dropped,
/// and in any case after `life`.
pub(crate) struct Receiver {
    pub(crate) url: String,
    shared: Arc<Shared>,
}

impl Receiver {
    pub(crate) fn start(bad_first: usize, life: Duration) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let shared = Arc::new(Shared::default());
        shared.bad_left.store(bad_first, Ordering::SeqCst);
        let sh = shared.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !sh.stop.load(Ordering::SeqCst) && t0.elapsed() < life {
                match listener.accept() {
                    Ok((stream, _)) => {
                        sh.connections.fetch_add(1, Ordering::SeqCst);
                        let sh = sh.clone();
                        std::thread::spawn(move || serve(stream, &sh));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Receiver { url, shared }
    }

    pub(crate) fn ok() -> Receiver {
        Receiver::start(0, DEADLINE * 2)
    }

    pub(crate) fn got(&self) -> Vec<Got> {
        self.shared.got.lock().unwrap().clone()
    }

    fn ids(&self) -> Vec<i64> {
        self.got().iter().map(|g| g.eventid).collect()
    }

    pub(crate) fn titles(&self) -> Vec<String> {
        self.got().iter().map(|g| g.title.clone()).collect()
    }

    pub(crate) fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// One connection: requests one after another until the client closes,
/// 5 s of silence, or the receiver stops.
fn serve(stream: TcpStream, sh: &Shared) {
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
        sh.requests.fetch_add(1, Ordering::SeqCst);
        let bad = sh
            .bad_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if bad {
            let answer = "HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\noops";
            if out.write_all(answer.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        let ts = req.header("x-backoffice-timestamp");
        let mut signed = ts.clone().into_bytes();
        signed.push(b'.');
        signed.extend_from_slice(&req.body);
        let json: serde_json::Value = serde_json::from_slice(&req.body).expect("JSON body");
        let delivery = req.header("x-backoffice-delivery");
        let fresh = ts
            .parse::<i64>()
            .is_ok_and(|t| (t - backoffice::clock::now()).abs() < 60);
        let signature_ok = fresh
            && req.header("x-backoffice-signature")
                == format!("sha256={}", crate::harness::hmac_hex(SECRET, &signed))
            && json["delivery"] == delivery.as_str()
            && json["kind"] == req.header("x-backoffice-event").as_str();
        sh.got.lock().unwrap().push(Got {
            eventid: json["eventid"].as_i64().unwrap(),
            title: json["title"].as_str().unwrap_or("").to_owned(),
            delivery,
            signature_ok,
        });
        if out
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// A PostgreSQL repository for the `backoffice` binary: a database of its
/// own, a short lease and heartbeat. Everything the binary printed is kept,
/// to check that no password or secret was ever shown.
struct PgRepo {
    db: pg::PgDb,
    url: String,
    said: Mutex<String>,
}

impl PgRepo {
    fn new(schema: &str) -> Option<PgRepo> {
        let db = pg::database()?;
        let url = db.url(schema);
        let r = PgRepo {
            db,
            url,
            said: Mutex::new(String::new()),
        };
        r.bo(&["setting", "-R", &r.url, "backoffice-lease-time", "1"]);
        r.bo(&["setting", "-R", &r.url, "backoffice-heartbeat", "1"]);
        Some(r)
    }

    fn keep(&self, out: &crate::harness::Done) {
        let mut s = self.said.lock().unwrap();
        s.push_str(&out.stdout());
        s.push_str(&out.stderr());
    }

    /// Runs `backoffice ARGS` to success; returns its stdout.
    fn bo(&self, args: &[&str]) -> String {
        let out = Cmd::backoffice().args(args).output();
        self.keep(&out);
        out.success()
    }

    /// Adds an endpoint; returns its id.
    fn add(&self, url: &str, kinds: &str) -> i64 {
        let out = self.bo(&[
            "webhook", "add", "-R", &self.url, url, "--secret", SECRET, "--kinds", kinds,
        ]);
        out.trim_start_matches("added:")
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no endpoint id in {out:?}"))
    }

    fn publish(&self, kind: &str, title: &str) {
        self.bo(&[
            "publish",
            "-R",
            &self.url,
            "--no-trigger",
            "--kind",
            kind,
            "--title",
            title,
        ]);
    }

    /// One worker run (`backoffice run URL`), a lease time after the last
    /// (runs are at least `L` apart); either exit status is accepted (a run
    /// where every endpoint failed reports the task as failed).
    fn run(&self) -> String {
        std::thread::sleep(Duration::from_millis(1100));
        let out = Cmd::backoffice().args(["run", &self.url]).output();
        self.keep(&out);
        format!("{}{}", out.stdout(), out.stderr())
    }

    fn status(&self) -> String {
        self.bo(&["status", &self.url])
    }

    fn conn(&self) -> backoffice::pg::PgConn {
        backoffice::pg::PgUrl::parse(&self.url)
            .unwrap()
            .connect()
            .unwrap()
    }

    /// An endpoint's ledger entry: (cursor, failures, next_attempt).
    fn entry(&self, id: i64) -> Option<(i64, i64, i64)> {
        let c = self.conn();
        ledger::get(Db::Postgres(&c), "webhooks", &id.to_string())
            .unwrap()
            .map(|e| (e.cursor, e.failures, e.next_attempt))
    }

    /// Lets every endpoint's next attempt come now.
    fn time_passes(&self) {
        self.conn()
            .execute(
                "UPDATE bo_ledger SET next_attempt = 0 WHERE task = 'webhooks'",
                &[],
            )
            .unwrap();
    }

    /// The event positions, in order (of `kind`, or all).
    fn positions(&self, kind: Option<&str>) -> Vec<i64> {
        self.conn()
            .query(
                "SELECT eventid FROM bo_event
                  WHERE eventid IS NOT NULL AND (CAST(?1 AS TEXT) IS NULL OR kind = ?1)
                  ORDER BY eventid",
                &[kind.into()],
            )
            .unwrap()
            .iter()
            .map(|r| r.int(0).unwrap())
            .collect()
    }

    /// Asserts that nothing the binary printed showed the password or the
    /// secret.
    fn nothing_secret_said(&self) {
        let said = self.said.lock().unwrap();
        assert!(
            !said.contains(pg::PASSWORD),
            "a password was printed: {said}"
        );
        assert!(!said.contains(SECRET), "a secret was printed: {said}");
    }
}

/// Issue 12, items 1 and 2 for webhooks, end to end with real processes:
/// endpoints added with `backoffice webhook add -R URL` receive every event
/// published with `backoffice publish -R URL` from `backoffice run URL`
/// workers, each once, in order, filtered by kind, signed (checked by the
/// receiver's own HMAC), with delivery ids that are distinct and stable.
/// Later runs deliver only what is new; `list`, `test`, `status` and
/// `remove` work on the URL; neither the password nor the secret is ever
/// printed.
#[test]
fn webhooks_deliver_on_a_postgresql_repository_through_the_binary() {
    let Some(r) = PgRepo::new("webhooks_e2e") else {
        return;
    };
    // Published (and given its position) before any endpoint: not delivered.
    r.publish("wiki", "before");
    r.run();
    let all = Receiver::ok();
    let wiki = Receiver::ok();
    let a = r.add(&all.url, "*");
    let w = r.add(&wiki.url, "wiki");
    for i in 0..6 {
        let kind = if i % 2 == 0 { "checkin" } else { "wiki" };
        r.publish(kind, &format!("event {i} $(touch /tmp/x) `id`"));
    }
    let said = r.run();
    let events = r.positions(None);
    assert_eq!(events.len(), 7, "{said}");
    assert_eq!(all.ids(), events[1..].to_vec(), "{said}");
    assert_eq!(wiki.ids(), r.positions(Some("wiki"))[1..].to_vec());
    assert!(
        all.got()
            .iter()
            .chain(wiki.got().iter())
            .all(|g| g.signature_ok),
        "{:?}",
        all.got()
    );
    // Delivery ids: SALT-ENDPOINT-POSITION-UID, all distinct.
    let ds: Vec<String> = all.got().iter().map(|g| g.delivery.clone()).collect();
    let unique: std::collections::HashSet<&String> = ds.iter().collect();
    assert_eq!(unique.len(), ds.len(), "{ds:?}");
    for (g, pos) in all.got().iter().zip(&events[1..]) {
        let parts: Vec<&str> = g.delivery.split('-').collect();
        assert_eq!(parts.len(), 4, "{}", g.delivery);
        assert_eq!(parts[1], a.to_string(), "{}", g.delivery);
        assert_eq!(parts[2], pos.to_string(), "{}", g.delivery);
        assert_eq!(parts[3].len(), 16, "a random uid: {}", g.delivery);
    }
    let newest = *events.last().unwrap();
    assert_eq!(r.entry(a).map(|e| e.0), Some(newest));
    assert_eq!(
        r.entry(w).map(|e| e.0),
        Some(newest),
        "past the check-ins too"
    );
    let st = r.status();
    assert!(st.contains("webhooks: 2 active (0 with events"), "{st}");

    // Nothing is sent twice; only what is new goes out.
    r.run();
    assert_eq!(all.ids().len(), 6);
    r.publish("wiki", "later");
    r.run();
    assert_eq!(all.titles().last().map(String::as_str), Some("later"));
    assert_eq!(wiki.titles().last().map(String::as_str), Some("later"));
    assert_eq!(all.ids().len(), 7);
    assert_eq!(wiki.ids().len(), 4);

    // Published with the trigger on: a worker the check starts delivers it.
    r.bo(&[
        "publish",
        "-R",
        &r.url,
        "--kind",
        "wiki",
        "--title",
        "triggered",
    ]);
    assert!(
        wait_until(DEADLINE, || all.ids().len() == 8 && wiki.ids().len() == 5),
        "the triggered worker delivered it: {:?}",
        all.titles()
    );

    // list (secrets masked), list --json (no secret), test, remove.
    let list = r.bo(&["webhook", "list", "-R", &r.url]);
    assert!(list.contains("2 webhooks"), "{list}");
    assert!(
        list.contains(&all.url) && list.contains("pg-t****"),
        "{list}"
    );
    assert!(list.contains("delivered 8"), "{list}");
    let json = r.bo(&["webhook", "list", "--json", "-R", &r.url]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[1]["kinds"], "wiki", "{json}");
    let out = r.bo(&["webhook", "test", "-R", &r.url, &a.to_string()]);
    assert_eq!(out.trim(), "HTTP 200");
    let t = all.got().last().unwrap().clone();
    assert!(t.eventid == 0 && t.signature_ok, "{t:?}");
    r.bo(&["webhook", "remove", "-R", &r.url, &a.to_string()]);
    assert_eq!(r.entry(a), None, "its ledger entry is gone");
    let list = r.bo(&["webhook", "list", "-R", &r.url]);
    assert!(
        list.contains("1 webhook") && !list.contains(&all.url),
        "{list}"
    );
    // Bad input on a URL: a clear error, nothing printed of the password.
    let e = Cmd::backoffice()
        .args(["webhook", "remove", "-R", &r.url, "99"])
        .output();
    r.keep(&e);
    assert!(e.failure().contains("no webhook 99"));
    let e = Cmd::backoffice()
        .args([
            "webhook", "add", "-R", &r.url, &all.url, "--secret", "short",
        ])
        .output();
    r.keep(&e);
    assert!(e.failure().contains("at least 16 characters"));
    r.nothing_secret_said();
}

/// Issue 12, item 2 for webhooks: a failing endpoint (HTTP 500) backs off
/// by the retry ledger's policy (about a minute), is not tried again before
/// its next attempt, is reported by `backoffice status URL`, becomes dead
/// after `webhook-max-attempts` failures in a row, and after `webhook retry`
/// receives everything it missed, in order, once.
#[test]
fn a_failing_endpoint_on_postgresql_backs_off_is_reported_and_recovers() {
    let Some(r) = PgRepo::new("webhooks_backoff") else {
        return;
    };
    let bad = Receiver::start(2, DEADLINE * 2);
    let id = r.add(&bad.url, "*");
    r.bo(&["setting", "-R", &r.url, "webhook-max-attempts", "2"]);
    for i in 0..3 {
        r.publish("wiki", &format!("e{i}"));
    }
    let said = r.run();
    assert_eq!(bad.requests(), 1, "stopped at the first failure: {said}");
    let (cursor, failures, next) = r.entry(id).unwrap();
    assert_eq!((cursor, failures), (0, 1), "{said}");
    let now = crate::harness::now();
    assert!(
        (now + 40..=now + 80).contains(&next),
        "backed off about a minute: {next} vs {now}"
    );
    let st = r.status();
    assert!(st.contains("failing (1 in a row"), "{st}");
    assert!(st.contains("event 1: HTTP 500"), "{st}");

    // Backing off: another run leaves it alone.
    r.run();
    assert_eq!(bad.requests(), 1, "not tried before its next attempt");

    // Its time comes: it fails again and is dead (webhook-max-attempts 2).
    r.time_passes();
    r.run();
    assert_eq!(bad.requests(), 2);
    assert_eq!(r.entry(id).unwrap().1, 2);
    let st = r.status();
    assert!(st.contains("is dead after 2 failures"), "{st}");
    r.time_passes();
    r.run();
    assert_eq!(bad.requests(), 2, "a dead endpoint is not tried");

    // The operator's retry: everything missed, in order, once.
    let out = r.bo(&["webhook", "retry", "-R", &r.url, &id.to_string()]);
    assert!(out.contains("active"), "{out}");
    r.run();
    assert_eq!(bad.titles(), ["e0", "e1", "e2"]);
    assert_eq!(r.entry(id).map(|e| (e.0, e.1)), Some((3, 0)));
    let st = r.status();
    assert!(
        !st.contains("failing (") && !st.contains("dead after"),
        "{st}"
    );
    r.run();
    assert_eq!(bad.titles().len(), 3, "nothing twice");
    r.nothing_secret_said();
}

/// Issue 12, item 4 for webhooks: a run whose lease was taken over (its
/// term is no longer the lease's) records nothing — the delivery it made
/// stays unrecorded, and so does a failure — and stops with the fencing
/// error; the holder of the new term sends the same delivery again, with
/// the same delivery id (at least once), and records it.
#[test]
fn a_webhooks_run_whose_term_is_gone_records_nothing() {
    use backoffice::{Context, Task};
    use backoffice_tasks::webhooks::{self, New, Webhooks};

    let Some(db) = pg::database() else { return };
    let url = backoffice::pg::PgUrl::parse(&db.url("webhooks_fenced")).unwrap();
    let c = url.connect().unwrap();
    let pdb = Db::Postgres(&c);
    let rx = Receiver::ok();
    let new = |u: &str| New {
        url: u.to_owned(),
        secret: SECRET.to_owned(),
        kinds: "*".to_owned(),
        from_start: false,
    };
    let w = webhooks::add(pdb, &new(&rx.url)).unwrap();
    let publish = |title: &str| {
        let ev = backoffice::events::Event {
            kind: "wiki".into(),
            title: title.into(),
            ..Default::default()
        };
        backoffice::pg::publish(&mut *c.client(), url.schema(), &ev).unwrap();
        c.stamp_events(None).unwrap();
    };
    publish("t");
    c.execute("UPDATE bo_lease SET term = 8", &[]).unwrap();
    let ctx = |term| Context {
        db: pdb,
        repo: Path::new(url.redacted()),
        now: crate::harness::now(),
        debug: false,
        term,
    };
    assert_eq!(Webhooks.due(pdb, ctx(8).now).unwrap(), backoffice::Due::Now);

    let e = Webhooks.run(&ctx(7)).unwrap_err();
    assert!(e.to_string().contains("fenced"), "{e}");
    assert_eq!(rx.titles(), ["t"], "the delivery went out (at least once)");
    let got = webhooks::get(pdb, w.id).unwrap();
    assert_eq!((got.cursor, got.delivered), (0, 0), "nothing recorded");

    // The holder of term 8 sends it again, with the same id, and records it.
    assert_eq!(Webhooks.run(&ctx(8)).unwrap(), 1);
    let g = rx.got();
    assert_eq!(g.len(), 2);
    assert_eq!(g[0].delivery, g[1].delivery, "the same delivery id");
    let got = webhooks::get(pdb, w.id).unwrap();
    assert_eq!((got.cursor, got.delivered), (1, 1));
    assert_eq!(
        Webhooks.due(pdb, ctx(8).now).unwrap(),
        backoffice::Due::Never
    );
    assert_eq!(Webhooks.events_done(pdb).unwrap(), Some(1));

    // A failure is progress too: a stale run does not record it either.
    let bad = Receiver::start(usize::MAX, DEADLINE * 2);
    let b = webhooks::add(pdb, &new(&bad.url)).unwrap();
    webhooks::remove(pdb, w.id).unwrap();
    publish("u");
    let e = Webhooks.run(&ctx(7)).unwrap_err();
    assert!(e.to_string().contains("fenced"), "{e}");
    assert_eq!(bad.requests(), 1);
    let got = webhooks::get(pdb, b.id).unwrap();
    assert_eq!((got.cursor, got.failures, got.next_attempt), (1, 0, 0));
    assert!(Webhooks.run(&ctx(8)).is_err(), "the endpoint fails");
    let got = webhooks::get(pdb, b.id).unwrap();
    assert_eq!((got.cursor, got.failures), (1, 1), "recorded by term 8");
    assert_eq!(Webhooks.events_done(pdb).unwrap(), Some(1), "kept for it");
}

/// `webhook add` on a fresh schema from many processes at once (three
/// schemas in turn, as the race is not lost every time): every endpoint is
/// added (the table created once, under the schema's webhooks lock; two
/// `CREATE TABLE IF NOT EXISTS` at once collide on PostgreSQL), each with
/// its own id and ledger entry.
#[test]
fn webhooks_added_at_once_on_a_fresh_schema_are_all_kept() {
    let Some(db) = pg::database() else {
        return;
    };
    const N: usize = 12;
    for round in 0..3 {
        let url = db.url(&format!("webhooks_race_{round}"));
        let mut children: Vec<_> = (0..N)
            .map(|i| {
                Cmd::backoffice()
                    .args(["webhook", "add", "-R", &url, "--secret", SECRET])
                    .arg(format!("http://127.0.0.1:9/hook/{i}"))
                    .spawn()
            })
            .collect();
        for c in &mut children {
            let st = crate::harness::wait_child(c, DEADLINE, "webhook add");
            assert!(st.success(), "a webhook add failed: {st}");
        }
        let c = backoffice::pg::PgUrl::parse(&url)
            .unwrap()
            .connect()
            .unwrap();
        let all = backoffice_tasks::webhooks::list(Db::Postgres(&c)).unwrap();
        let mut urls: Vec<String> = all.iter().map(|w| w.url.clone()).collect();
        urls.sort();
        let mut want: Vec<String> = (0..N)
            .map(|i| format!("http://127.0.0.1:9/hook/{i}"))
            .collect();
        want.sort();
        assert_eq!(urls, want, "every endpoint kept");
        assert_eq!(
            ledger::all(Db::Postgres(&c), "webhooks").unwrap().len(),
            N,
            "each with its entry"
        );
    }
}

/// Issue 12, benchmark: webhook deliveries per second to a local keep-alive
/// receiver through the PostgreSQL store (10,000 events published in one
/// transaction and given their positions, then one `backoffice run URL`:
/// reading, signing, POSTing, and a fenced commit per delivery), to one
/// endpoint and to 4 in parallel (2,500 each). Run with
/// `cargo test --release -p backoffice-cli --test integration bench_pg_webhook -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_pg_webhook_deliveries_per_second() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    for endpoints in [1usize, 4] {
        let Some(r) = PgRepo::new(&format!("bench_{endpoints}")) else {
            return;
        };
        let rs: Vec<Receiver> = (0..endpoints)
            .map(|_| Receiver::start(0, Duration::from_secs(300)))
            .collect();
        for rx in &rs {
            r.add(&rx.url, "*");
        }
        let per = n / endpoints;
        let mut client = r.db.connect();
        let mut tx = client.transaction().unwrap();
        for i in 0..per {
            let ev = backoffice::events::Event {
                kind: "checkin".into(),
                title: format!("Check-in {i}"),
                body: "Some details about it.".into(),
                url: Some(format!("https://example.org/info/{i}")),
                author: Some("ann".into()),
                time: None,
            };
            backoffice::pg::publish(&mut tx, &format!("bench_{endpoints}"), &ev).unwrap();
        }
        tx.commit().unwrap();
        // The positions are given first, as a worker would in an earlier
        // run (the engine's part, timed on its own): the run below
        // measures the deliveries.
        let t = Instant::now();
        let stamped = r.conn().stamp_events(None).unwrap();
        assert_eq!(stamped, per as u64);
        let stamping = t.elapsed();
        std::thread::sleep(Duration::from_millis(1100));
        let done = Cmd::backoffice().args(["run", &r.url]).output();
        let took = done.elapsed;
        let said = format!("{}{}", done.stdout(), done.stderr());
        for rx in &rs {
            assert_eq!(rx.ids().len(), per, "{said}");
            assert!(rx.got().iter().all(|g| g.signature_ok));
        }
        eprintln!(
            "PostgreSQL: {n} deliveries to {endpoints} keep-alive endpoint(s) in {took:?} \
             (whole `backoffice run URL` process): {:.0}/s; giving the {per} events their \
             positions before: {stamping:?}",
            (per * endpoints) as f64 / took.as_secs_f64()
        );
    }
}
