//! The one integration-test binary: real processes, real SQLite files.
//!
//! Each module is one area; each test gets its own temporary directory
//! (`harness::Env`). Tests that need an outside program (`fossil`, `setpriv`,
//! PostgreSQL's `initdb` and `postgres`) skip with a message when it is missing, except under
//! `BACKOFFICE_REQUIRE_EXTERNAL=1`, which CI sets.

mod harness;
// The tests' own PostgreSQL server on a Unix socket; a database per test.
mod pg;

// The command-line surface: settings, status, lease, pid, errors.
mod commands;
// Issue 14 part 4, the command line alike everywhere: REPO and -R, secrets
// from files and stdin, `run` by hand, progress, hints.
mod surface;
// The worker loop with many real processes: exclusion, spacing, on-deck, modes.
mod engine;
// Lease liveness: stale and garbage leases, pid reuse, zombies, clock steps.
mod liveness;
// The after-request trigger: nothing due, read-only, spawning, reaping, failures.
mod trigger;
// Sweeps and --poll over many repositories.
mod poll;
// Interoperation with the real Fossil binary.
mod interop;
// Notifications: publish, subscribers, alerts, send methods, the outbox.
mod notify;
// The outbox at its edges: durable sends, unique identities, retries, paths.
mod outbox;
// The SMTP `relay` send method against a real SMTP server (tests/smtp_server.py, asyncio).
mod relay;
// Issue 14, part 5: the relay against a real mail server, Exim run from a
// configuration of the test's own (tests/mta_exim.conf), STARTTLS and AUTH.
mod mta;
// Shell hooks: order, stdin JSON, failures and retries, timeouts, output bounds.
mod hooks;
// Webhooks against a real HTTP receiver that verifies signatures: order,
// retries, time-outs, refused connections, dead endpoints, parallelism.
mod webhooks;
// Issue 14, part 5: real deliveries verified by the `standardwebhooks`
// package from PyPI (tests/standard_webhooks_receiver.py), SQLite and PostgreSQL.
mod standard_webhooks;
// Database maintenance: `maintain --now`, maintenance in a worker run, status.
mod maintain;
// The web front: `serve` over real HTTP, `cgi` from the environment and
// under Python's CGI server, the demo.
mod signup;
mod web;
// The status page that shows history and acts: sessions, CSRF, actions by
// form, API and CLI, history, the index, the public summary, Chromium.
mod operate;
// Upgrades: a binary replaced on disk under `serve` and `run --poll`; a
// repository written by the previous release keeps its state.
mod upgrade;
// Replication to file peers: generations, failures, a copy killed half-way.
mod replicate;
// Fault injection: SMTP, webhook and hook failures and SIGKILLed workers at
// once, then healed; nothing lost, few duplicates, never two workers at once.
mod chaos;
// Issue 12, several hosts on PostgreSQL: the harness's server, row locks,
// terminated sessions, the server's clock.
mod several_hosts;
// Issue 12, the shipped tasks on PostgreSQL: the retry ledger's contract on
// both stores; shell hooks on a schema through the binary, fenced.
mod pg_tasks;
// Issue 12, webhooks on PostgreSQL: endpoints and signed deliveries through
// the binary against a real receiver, retries, fencing, the first use.
mod pg_webhooks;
// Issue 12, email on PostgreSQL: subscribers, alerts, digests and the
// outbox on a schema through the binary; fenced runs; the clock in hand.
mod pg_notify;
// Issue 12, the web front on PostgreSQL: `serve` and `cgi` on a schema and
// on a database's schemas, the cluster on the page, the database away.
mod pg_web;
// Operations: contrib/'s systemd units, crontab, nginx + fcgiwrap and Apache
// configurations run for real; `serve --access-log`.
mod ops;
// Issue 15, schedules: the command line, slots found due with nothing
// written, once per slot.
mod schedules;
// The shape of the code: the engine names no task, the web front imports one way.
mod layout;
