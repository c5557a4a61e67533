//! An example Rust host: a tiny application that embeds `backoffice` with a
//! task of its own. It is also what the test suite runs as real processes.
//!
//! The application keeps an `outbox(id, body, done)` table. A "request"
//! inserts a row and then calls `Backoffice::after_request` on its
//! connection. The `outbox` task is due whenever a row is not done; it
//! writes each pending body to a file in the `host-outdir` folder (if set)
//! and marks it done.
//!
//! ```text
//! host demo [DIR]            the README's second walk-through (default DIR:
//!                            ./backoffice-host-demo, beside `backoffice demo`'s own)
//! host simulate REPO N MS L  N requests MS ms apart, then stay alive L ms
//! host requests REPO         a request per line read on stdin (the time
//!                            in nanoseconds, then the check's answer, on stdout)
//! host pg-requests URL N MS [publish]
//!                            N requests MS ms apart on a PostgreSQL schema, each
//!                            followed by the cached after-request check
//!                            (`PgTrigger`); with `publish`, each first inserts an
//!                            outbox row; then prints the time per check
//! host init REPO             create the application's table (REPO may be a
//!                            postgres:// URL with ?schema=NAME)
//! host <backoffice command>  every `backoffice` command, with the outbox task
//! ```
//!
//! The `outbox` task declares its one real setting, `host-outdir`, the way
//! any task does ([`Task::settings`]), so `host setting`, `host status` and
//! the status page know it, check it and show it with its help.
//!
//! For tests, the task also reads these `config` rows: `host-journal` (a file
//! to which it appends `enter PID NANOS` and `exit PID NANOS` lines),
//! `host-work-ms` (how long the work takes), and `host-fail` (`error` or
//! `panic`, to see that a failing task does not stop the others).
//!
//! With `host-fenced-write` set, the outbox task works as a task with
//! fenced progress writes does ([`backoffice::writes::fenced`]): it takes
//! its batch first, works (`host-work-ms`), then marks each row done and
//! records it in `host_delivered(id, pid, term)`, one transaction per row
//! whose last step checks that the lease still carries the run's term. A
//! worker paused mid-batch while another took the lease over is refused
//! there and stops: the failure (`fenced: …`) is in the run log, and
//! `host_delivered` shows that nothing was recorded twice.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backoffice::settings::{Def, Kind};
use backoffice::{Backoffice, Context, Db, Due, Started, Task, TaskError, Tasks};
use rusqlite::Connection;

/// The application's own table.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS outbox(
  id INTEGER PRIMARY KEY,
  body TEXT NOT NULL,
  done INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(id) WHERE done = 0;";

struct Outbox;

/// The outbox task's settings: one definition each, read by `setting`,
/// `status` and the status page.
const OUTBOX_SETTINGS: &[Def] = &[Def {
    name: "host-outdir",
    kind: Kind::Path,
    default: "",
    help: "The folder that gets one file per outbox row; empty: rows are only marked done.",
    secret: false,
}];

fn config(db: Db<'_>, name: &str) -> Option<String> {
    db.config_get(name).ok().flatten()
}

fn journal(db: Db<'_>, what: &str) {
    if let Some(path) = config(db, "host-journal") {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let line = format!("{what} {} {nanos}\n", std::process::id());
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// True if an error says the application's table is not there yet.
fn no_table(e: &backoffice::db::DbError) -> bool {
    let t = e.to_string();
    t.contains("no such table") || t.contains("does not exist")
}

// The task is portable: one SQL text for SQLite and PostgreSQL, through
// `Db` (parameters `?N`, integers as BIGINT), so the same host runs on a
// repository file or a PostgreSQL schema.
impl Task for Outbox {
    fn name(&self) -> &str {
        "outbox"
    }

    fn settings(&self) -> &'static [Def] {
        OUTBOX_SETTINGS
    }

    fn due(&self, db: Db<'_>, _now: i64) -> Result<Due, TaskError> {
        // The partial index makes this a point lookup however big the table is.
        match db.query_opt("SELECT 1 FROM outbox WHERE done = 0 LIMIT 1", &[]) {
            Ok(Some(_)) => Ok(Due::Now),
            Ok(None) => Ok(Due::Never),
            Err(e) if no_table(&e) => Ok(Due::Never),
            Err(e) => Err(e.into()),
        }
    }

    fn run(&self, ctx: &Context<'_>) -> Result<u64, TaskError> {
        let db = ctx.db;
        if config(db, "host-fenced-write").is_some() {
            return fenced_run(ctx);
        }
        journal(db, "enter");
        let ms: u64 = config(db, "host-work-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        std::thread::sleep(Duration::from_millis(ms));
        let rows = db.query(
            "SELECT id, body FROM outbox WHERE done = 0 ORDER BY id",
            &[],
        )?;
        let outdir = config(db, "host-outdir").map(PathBuf::from);
        for r in &rows {
            let (id, body) = (r.int(0)?, r.text(1)?);
            if let Some(dir) = &outdir {
                std::fs::create_dir_all(dir)?;
                let tmp = dir.join(format!(".{id}.tmp"));
                std::fs::write(&tmp, body)?;
                std::fs::rename(&tmp, dir.join(format!("{id:06}.txt")))?;
            }
            db.execute("UPDATE outbox SET done = 1 WHERE id = ?1", &[id.into()])?;
        }
        journal(db, "exit");
        Ok(rows.len() as u64)
    }
}

/// The outbox task with fenced progress writes (`host-fenced-write`).
fn fenced_run(ctx: &Context<'_>) -> Result<u64, TaskError> {
    let db = ctx.db;
    db.execute(
        "CREATE TABLE IF NOT EXISTS host_delivered(
           id BIGINT NOT NULL, pid BIGINT NOT NULL, term BIGINT NOT NULL)",
        &[],
    )?;
    // The batch is in hand before the work, as in a real task mid-batch:
    // a worker paused during the work still means to record these rows.
    let rows: Vec<i64> = db
        .query("SELECT id FROM outbox WHERE done = 0 ORDER BY id", &[])?
        .iter()
        .map(|r| r.int(0))
        .collect::<Result<_, _>>()?;
    let ms: u64 = config(db, "host-work-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    journal(db, "enter");
    std::thread::sleep(Duration::from_millis(ms));
    for id in &rows {
        // One transaction per row, fenced on the run's term: refused (and
        // rolled back) if another worker took the lease over meanwhile.
        db.write(Some(ctx.term), |db| {
            db.execute("UPDATE outbox SET done = 1 WHERE id = ?1", &[(*id).into()])?;
            db.execute(
                "INSERT INTO host_delivered(id, pid, term) VALUES (?1, ?2, ?3)",
                &[(*id).into(), std::process::id().into(), ctx.term.into()],
            )
        })?;
    }
    journal(db, "exit");
    Ok(rows.len() as u64)
}

/// A second task that fails on request, to show the others still run.
struct Flaky;

impl Task for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    fn due(&self, _: Db<'_>, _: i64) -> Result<Due, TaskError> {
        Ok(Due::Never)
    }
    fn run(&self, ctx: &Context<'_>) -> Result<u64, TaskError> {
        match config(ctx.db, "host-fail").as_deref() {
            Some("error") => Err("flaky task failed on purpose".into()),
            Some("panic") => panic!("flaky task panicked on purpose"),
            _ => Ok(0),
        }
    }
}

/// A consumer of the event log, portable like `Outbox`: with
/// `host-events-file` set, it appends `POSITION KIND TITLE` for each event
/// after its cursor (`host-events-cursor`), and moves the cursor in a
/// write fenced on the run's term.
struct Events;

impl Task for Events {
    fn name(&self) -> &str {
        "events"
    }
    fn due(&self, db: Db<'_>, _now: i64) -> Result<Due, TaskError> {
        if config(db, "host-events-file").is_none() {
            return Ok(Due::Never);
        }
        let cursor = config(db, "host-events-cursor").and_then(|v| v.parse().ok());
        let next = backoffice::events::after(db, cursor.unwrap_or(0), 1)?;
        Ok(if next.is_empty() {
            Due::Never
        } else {
            Due::Now
        })
    }
    fn run(&self, ctx: &Context<'_>) -> Result<u64, TaskError> {
        let Some(file) = config(ctx.db, "host-events-file") else {
            return Ok(0);
        };
        let cursor: i64 = config(ctx.db, "host-events-cursor")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let evs = backoffice::events::after(ctx.db, cursor, 1000)?;
        let Some(last) = evs.last().map(|e| e.eventid) else {
            return Ok(0);
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)?;
        for e in &evs {
            writeln!(f, "{} {} {}", e.eventid, e.kind, e.title)?;
        }
        ctx.db.write(Some(ctx.term), |db| {
            db.config_set("host-events-cursor", &last.to_string())
        })?;
        Ok(evs.len() as u64)
    }
}

fn tasks() -> Tasks {
    Tasks::new().with(Flaky).with(Outbox).with(Events)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let r = match args.get(1).map(String::as_str) {
        Some("demo") => demo(args.get(2).map(PathBuf::from)),
        Some("simulate") => simulate(&args[2..]),
        Some("requests") => requests(&args[2..]),
        Some("pg-requests") => pg_requests(&args[2..]),
        Some("init") if args.len() == 3 && backoffice::pg::is_url(&args[2]) => init_pg(&args[2]),
        Some("init") if args.len() == 3 => init(Path::new(&args[2])).map(drop),
        _ => return backoffice_cli::main(tasks()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("host: error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn init(path: &Path) -> Res<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    drop(conn);
    // Repo::open creates the config table the engine needs.
    backoffice::Repo::open(path)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// `host init URL`: the application's table in a PostgreSQL schema (the
/// engine creates its own tables on first use).
fn init_pg(url: &str) -> Res<()> {
    let url = backoffice::pg::PgUrl::parse(url)?;
    let conn = url.connect()?;
    conn.batch(
        "CREATE TABLE IF NOT EXISTS outbox(
           id bigserial PRIMARY KEY, body text NOT NULL, done bigint NOT NULL DEFAULT 0);
         CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(id) WHERE done = 0;",
    )?;
    Ok(())
}

/// One "request" that leaves work behind.
fn publish(conn: &Connection, body: &str) -> Res<()> {
    conn.execute("INSERT INTO outbox(body) VALUES (?1)", [body])?;
    Ok(())
}

/// `host simulate REPO N INTERVAL_MS LINGER_MS`: a long-lived host. Each
/// request publishes a row and runs the after-request hook; the outcome of
/// each is printed. Then it stays alive, so a test can look for zombies.
fn simulate(args: &[String]) -> Res<()> {
    let [repo, n, interval, linger] = args else {
        return Err("usage: host simulate REPO N INTERVAL_MS LINGER_MS".into());
    };
    let conn = init(Path::new(repo))?;
    let bo = Backoffice::new(tasks());
    let (n, interval, linger): (u64, u64, u64) = (n.parse()?, interval.parse()?, linger.parse()?);
    let mut out = std::io::stdout().lock();
    writeln!(out, "host pid {}", std::process::id())?;
    out.flush()?;
    for i in 0..n {
        publish(&conn, &format!("message {i}"))?;
        match bo.after_request(&conn) {
            Started::Worker { pid } => writeln!(out, "request {i}: started worker {pid}")?,
            Started::NotNeeded(c) => writeln!(out, "request {i}: {}", c.describe())?,
            other => writeln!(out, "request {i}: {other:?}")?,
        }
        out.flush()?;
        std::thread::sleep(Duration::from_millis(interval));
    }
    writeln!(out, "lingering pid {}", std::process::id())?;
    out.flush()?;
    std::thread::sleep(Duration::from_millis(linger));
    writeln!(out, "done")?;
    Ok(())
}

/// `host requests REPO`: a long-lived host that holds its connection open,
/// as a server does, and makes one request per line read on standard
/// input: insert an outbox row, then the after-request check. For each it
/// prints `T0 INSERT_NS ANSWER`: T0 is the wall clock in nanoseconds just
/// before the check (after the insert has committed, as a request's
/// writes are before its after-request check), so `bench/trigger_latency.sh`
/// can time an embedded host's check up to its worker's `enter` stamp;
/// INSERT_NS is how long the insert took. Ends at end of input.
fn requests(args: &[String]) -> Res<()> {
    let [repo] = args else {
        return Err("usage: host requests REPO".into());
    };
    let conn = init(Path::new(repo))?;
    let bo = Backoffice::new(tasks());
    let mut out = std::io::stdout().lock();
    for (i, line) in std::io::stdin().lines().enumerate() {
        line?;
        let inserted = Instant::now();
        publish(&conn, &format!("request {i}"))?;
        let ins = inserted.elapsed().as_nanos();
        let t0 = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        match bo.after_request(&conn) {
            Started::Worker { pid } => writeln!(out, "{t0} {ins} started worker {pid}")?,
            Started::NotNeeded(c) => writeln!(out, "{t0} {ins} {}", c.describe())?,
            other => writeln!(out, "{t0} {ins} {other:?}")?,
        }
        out.flush()?;
    }
    Ok(())
}

/// `host pg-requests URL N INTERVAL_MS [publish]`: a long-lived host on a
/// PostgreSQL schema. Each request (optionally) inserts an outbox row and
/// tells the trigger it published, then runs the cached after-request
/// check; a line per request says what it did. At the end, the check's
/// total and worst time.
fn pg_requests(args: &[String]) -> Res<()> {
    let (url, n, interval, publish) = match args {
        [u, n, i] => (u, n, i, false),
        [u, n, i, p] if p == "publish" => (u, n, i, true),
        _ => return Err("usage: host pg-requests URL N INTERVAL_MS [publish]".into()),
    };
    let url = backoffice::pg::PgUrl::parse(url)?;
    let conn = url.connect()?;
    let bo = backoffice::pg::PgTrigger::new(tasks());
    let (n, interval): (u64, u64) = (n.parse()?, interval.parse()?);
    let mut out = std::io::stdout().lock();
    let (mut total, mut worst) = (Duration::ZERO, Duration::ZERO);
    for i in 0..n {
        if publish {
            conn.batch("INSERT INTO outbox(body) VALUES ('request')")?;
            bo.published(&url);
        }
        let t0 = Instant::now();
        let started = bo.after_request(&conn);
        let took = t0.elapsed();
        total += took;
        worst = worst.max(took);
        match started {
            Started::Worker { pid } => writeln!(out, "request {i}: started worker {pid}")?,
            Started::NotNeeded(c) => writeln!(out, "request {i}: {}", c.describe())?,
            other => writeln!(out, "request {i}: {other:?}")?,
        }
        if interval > 0 {
            std::thread::sleep(Duration::from_millis(interval));
        }
    }
    writeln!(
        out,
        "checks: {n}, mean {:.2} us, worst {:.1} us",
        total.as_secs_f64() * 1e6 / n.max(1) as f64,
        worst.as_secs_f64() * 1e6
    )?;
    Ok(())
}

/// The README's first command: watch the backoffice work in under a minute.
fn demo(dir: Option<PathBuf>) -> Res<()> {
    // Its own folder: this walk-through starts from an empty repository
    // each time, and must not wipe the first demo's (`backoffice demo`,
    // ./backoffice-demo) that the README has the reader keep.
    let dir = dir.unwrap_or_else(|| PathBuf::from("backoffice-host-demo"));
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let db = dir.join("demo.db");
    let outdir = dir.join("outbox");
    let log = dir.join("backoffice.log");
    for p in [&db, &log] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(&outdir);
    let conn = init(&db)?;
    let lease_time = 3;
    let set = |k: &str, v: &str| backoffice::repo::config_set(&conn, k, v);
    set("project-name", "backoffice demo")?;
    set("backoffice-lease-time", &lease_time.to_string())?;
    set("backoffice-logfile", &log.display().to_string())?;
    set("host-outdir", &outdir.display().to_string())?;
    let bo = Backoffice::new(tasks());
    let cli = std::env::current_exe()?;
    let show = |title: &str, cmd: &[&str]| -> Res<()> {
        println!("\n$ backoffice {} -R {}", cmd.join(" "), db.display());
        let mut args = cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        args.extend(["-R".into(), db.display().to_string()]);
        let out = std::process::Command::new(&cli).args(&args).output()?;
        let _ = title;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        Ok(())
    };
    println!("Demo repository: {}", db.display());
    println!(
        "Lease time: {lease_time} s (the default is 60); run log: {}",
        log.display()
    );

    println!("\n1. Read-only traffic: 1,000 requests with nothing due.");
    let t0 = Instant::now();
    let mut started = 0;
    for _ in 0..1000 {
        if matches!(bo.after_request(&conn), Started::Worker { .. }) {
            started += 1;
        }
    }
    let build = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    println!(
        "   workers started: {started} (the checks took {:.1} µs each in this {build})",
        t0.elapsed().as_secs_f64() * 1e6 / 1000.0
    );

    println!("\n2. A request leaves 3 messages behind; the check starts a worker and returns.");
    for i in 1..=3 {
        publish(&conn, &format!("Hello from message {i}\n"))?;
    }
    let t0 = Instant::now();
    let s = bo.after_request(&conn);
    println!("   after_request: {s:?} in {} µs", t0.elapsed().as_micros());
    wait_files(&outdir, 3, Duration::from_secs(10));
    println!(
        "   {} files in {} after {} ms",
        count_files(&outdir),
        outdir.display(),
        t0.elapsed().as_millis()
    );

    println!("\n3. Two more requests while the lease is held: one worker waits on deck.");
    publish(&conn, "Hello from message 4\n")?;
    println!("   after_request: {:?}", bo.after_request(&conn));
    publish(&conn, "Hello from message 5\n")?;
    std::thread::sleep(Duration::from_millis(200));
    println!("   after_request: {:?}", bo.after_request(&conn));
    show("lease", &["lease"])?;
    let t0 = Instant::now();
    wait_files(&outdir, 5, Duration::from_secs(lease_time + 10));
    println!(
        "\n   the on-deck worker ran when the lease ended: {} files after {:.1} s",
        count_files(&outdir),
        t0.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(300));
    show("status", &["status"])?;
    println!("\n$ cat {}", log.display());
    print!("{}", std::fs::read_to_string(&log).unwrap_or_default());
    println!(
        "\nTry: cargo run -q -p backoffice-cli -- status -R {}",
        db.display()
    );
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".txt"))
                .count()
        })
        .unwrap_or(0)
}

fn wait_files(dir: &Path, n: usize, limit: Duration) {
    let t0 = Instant::now();
    while count_files(dir) < n && t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
}
