//! Every command and flag, defined once; the `///` comments are the `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Fossil-style background work for SQLite-backed services: a lease in the
/// database, detached workers started after requests, no daemon.
#[derive(Debug, Parser)]
#[command(name = "backoffice", version, max_term_width = 100)]
#[command(
    after_help = "Settings live in each repository's `config` table; see `backoffice setting -R REPO`.\n\
Logs: `backoffice-logfile` (or --logfile) gets one line per run; RUST_LOG=debug shows the engine's decisions on stderr."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the backoffice work now (Fossil's `fossil backoffice`).
    ///
    /// With one repository and no --poll, this is one worker, exactly like the
    /// one a request starts: it takes the lease and runs the tasks, or waits on
    /// deck while another worker holds the lease (unless --nodelay).
    ///
    /// With several repositories, or --poll, the repositories are checked in
    /// parallel in this one process. A repository where nothing is due is
    /// left alone (no lease write); where something is due, a no-delay worker
    /// runs through its lease. A repository that fails is reported and the
    /// sweep goes on; the exit status is 1 if any failed.
    Run(RunArgs),

    /// Show the lease as `fossil test-backoffice-lease` does, then our extension fields.
    Lease(LeaseArgs),

    /// Say whether processes exist and are live, like `fossil test-process-id`.
    Pid(PidArgs),

    /// Show or change settings (all of them when no NAME is given).
    ///
    /// The repository is the first argument, or -R REPO; with -R the
    /// arguments are only NAME and VALUE: `backoffice setting app.db
    /// email-send-method dir` and `backoffice setting -R app.db
    /// email-send-method dir` are the same.
    Setting(SettingArgs),

    /// Show the last run, the lease in words, and what is due next.
    Status(StatusArgs),

    /// The after-request check, for hosts in any language: if work is due and
    /// no worker is queued, start a detached worker and return at once.
    ///
    /// Run it after a successful request. It never blocks on the work and
    /// never fails because of the backoffice: it prints what it decided and
    /// exits 0 unless the repository itself cannot be opened.
    Trigger(TriggerArgs),

    /// Publish an event, as an application does, from any language; then run
    /// the after-request check so a worker sends the alerts.
    Publish(PublishArgs),

    /// Add, list, show, change or remove subscribers.
    Subscriber(SubscriberArgs),

    /// Look at the outbox: queued, sent and dead messages; retry or purge them.
    Outbox(OutboxArgs),

    /// Add, list, change, remove or try shell hooks run on new events.
    ///
    /// Each hook runs as `/bin/sh -c CMD` with the new events since its own
    /// cursor on stdin, one JSON object per line; `%R` is the repository
    /// path and `%F` this executable (both shell-quoted). Exit 0 moves its
    /// cursor; anything else retries the same events later, with backoff.
    Hook(HookArgs),

    /// Add, list, test, retry or remove webhook endpoints (signed HTTP POSTs of every event).
    Webhook(WebhookArgs),

    /// Add, list, show, pause, resume, run or remove schedules: periodic
    /// commands or events, run once per slot by the worker (no cron daemon).
    Schedule(ScheduleArgs),

    /// Add, list, remove or sync replication peers: consistent copies of the
    /// repository kept at file paths (local disks, network mounts) or on
    /// other hosts over HTTP(S).
    ///
    /// An HTTP peer is another `backoffice serve --replica-dir DIR
    /// --replica-token-file FILE`; add it by its replica URL,
    /// `https://HOST/replica/NAME`, with that token (16 characters or more)
    /// in `--token-file` or $BACKOFFICE_PEER_TOKEN. Each copy is checked
    /// there (`PRAGMA quick_check`) before it replaces the last one.
    Peer(PeerArgs),
    /// Run the database maintenance steps now and print what each did.
    ///
    /// Without --now, the steps that are due on their schedules (the same
    /// ones the `maintenance` task would run); with --now, every step that
    /// is not turned off, ignoring schedules and thresholds: `PRAGMA
    /// optimize`, a WAL checkpoint (TRUNCATE), incremental vacuum (with
    /// auto_vacuum=INCREMENTAL), `PRAGMA quick_check`, and deleting old sent
    /// outbox messages. Exits 1 if a step failed or the check found a
    /// problem. Does not take the lease: the steps are safe beside a worker.
    Maintain(MaintainArgs),

    /// Serve status pages, the JSON API and metrics over HTTP; each
    /// successful request runs the after-request check, as Fossil's server does.
    ///
    /// Routes: `/` (every repository), `/r/NAME` (status page),
    /// `/r/NAME/status.json`, `POST /r/NAME/events` and `/r/NAME/subscribers`
    /// (these need `Authorization: Bearer TOKEN`; see `backoffice token`),
    /// `/r/NAME/unsubscribe/CODE` (the List-Unsubscribe target), `/metrics`.
    /// NAME is the repository's file name without its extension, or its
    /// PostgreSQL schema.
    ///
    /// Stop it with Ctrl-C or SIGTERM; requests in flight finish first.
    /// Start-up and shutdown are logged on stderr; --access-log adds a line
    /// per request. Examples for systemd, nginx and Apache: contrib/ in the
    /// source tree.
    Serve(ServeArgs),

    /// Answer one request as a CGI program (nginx with fcgiwrap, Apache,
    /// althttpd): the same routes as `serve`.
    ///
    /// The repository comes from $BACKOFFICE_REPO (one file, or a postgres://
    /// URL: the environment keeps its password off command lines) or
    /// --repolist DIR (or a postgres:// URL of a database).
    /// After the reply, the after-request check may start a detached worker;
    /// this process exits at once and the worker holds none of the web
    /// server's descriptors.
    Cgi(CgiArgs),

    /// Make a new API token for a repository (the old one stops working),
    /// or revoke it. The token is printed once; only its hash is stored.
    Token(TokenArgs),

    /// Try it: make a demo repository with subscribers and events, send
    /// email into a local folder, and serve it on 127.0.0.1.
    Demo(DemoArgs),

    /// Print a shell completion script for `backoffice`.
    ///
    /// For example, bash: `backoffice completions bash >
    /// /etc/bash_completion.d/backoffice`; zsh: `backoffice completions zsh >
    /// "${fpath[1]}/_backoffice"`; fish: `backoffice completions fish >
    /// ~/.config/fish/completions/backoffice.fish`.
    Completions(CompletionsArgs),

    /// Print the manual page, `backoffice(1)`, in roff (`backoffice man |
    /// man -l -`), or write one page per command into a folder with --dir.
    Man(ManArgs),

    /// The detached worker process a trigger starts (internal).
    #[command(hide = true)]
    Worker(WorkerArgs),

    /// Removes a replication copy's temporary file if its copier dies (internal).
    #[command(hide = true)]
    GuardTemp(GuardTempArgs),

    /// Runs a hook or `pipe` command so that its whole process tree ends
    /// with its worker (internal).
    #[command(hide = true)]
    GuardChild(GuardChildArgs),
}

/// `backoffice run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Repositories (SQLite files) to service; or one PostgreSQL schema as
    /// postgres://USER@HOST/DB?schema=NAME (one worker; no sweep yet).
    #[arg(value_name = "REPO")]
    pub repos: Vec<PathBuf>,

    /// Also a repository (accepted for compatibility with Fossil's -R).
    #[arg(short = 'R', long = "repository", value_name = "REPO")]
    pub repository: Vec<PathBuf>,

    /// Keep going: sweep the repositories every SECONDS, forever (or --sweeps times).
    /// A repository is visited when something is due, when its file changed since the
    /// last visit, or when --min seconds passed.
    #[arg(long, value_name = "SECONDS")]
    pub poll: Option<u64>,

    /// With --poll: visit every repository at least this often even when nothing
    /// is due and nothing changed [default: 3600].
    #[arg(long, value_name = "SECONDS", requires = "poll")]
    pub min: Option<u64>,

    /// Never wait on deck: if another worker holds the lease, exit at once.
    #[arg(long)]
    pub nodelay: bool,

    /// Ignore the lease and run the tasks directly. Two workers may then overlap;
    /// use it only for debugging.
    #[arg(long)]
    pub nolease: bool,

    /// Append run log lines to this file (overrides the backoffice-logfile setting).
    #[arg(long, value_name = "FILE")]
    pub logfile: Option<PathBuf>,

    /// Print each lease decision on stderr.
    #[arg(long)]
    pub trace: bool,

    /// Log a line for every run, including runs that did nothing ("no-op"),
    /// and print it on stderr too.
    #[arg(long)]
    pub debug: bool,

    /// Say on stderr what a worker for one repository is doing: waiting on
    /// deck (until when), leaving because another worker is on deck, what
    /// it ran. This is the default when stderr is a terminal (where a sweep
    /// over several repositories also shows its progress); under cron and
    /// in logs (not a terminal) it stays quiet unless asked with -v.
    #[arg(short, long)]
    pub verbose: bool,

    /// Threads that check repositories in parallel during a sweep [default: 4 per core, at most 16].
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,

    /// With --poll: stop after N sweeps (for tests, or cron with a time budget);
    /// the exit status is 1 if a repository failed in any of them.
    #[arg(long, value_name = "N", requires = "poll")]
    pub sweeps: Option<u64>,

    /// How long to wait for another writer's lock before reporting the repository as locked.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub busy_timeout: u64,
}

/// `backoffice lease`
#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// Delete the lease row first. Only for recovery: a worker that is still
    /// running may then overlap with a new one.
    #[arg(long)]
    pub reset: bool,

    /// The repository: an SQLite file, or a PostgreSQL schema as postgres://USER@HOST/DB?schema=NAME.
    #[arg(short = 'R', long = "repository", value_name = "REPO")]
    pub repository: Option<PathBuf>,

    /// The repository, as a plain argument.
    #[arg(value_name = "REPO", conflicts_with = "repository")]
    pub repo: Option<PathBuf>,
}

/// `backoffice pid`
#[derive(Debug, Args)]
pub struct PidArgs {
    /// Wait this many seconds before looking at the processes.
    #[arg(long, value_name = "SECONDS")]
    pub sleep: Option<u64>,

    /// Also show each process's state and start time.
    #[arg(short, long)]
    pub verbose: bool,

    /// Process ids to look at.
    #[arg(value_name = "PID", allow_negative_numbers = true)]
    pub pids: Vec<i64>,
}

/// `backoffice setting`
#[derive(Debug, Args)]
pub struct SettingArgs {
    /// The repository (an SQLite file, or postgres://USER@HOST/DB?schema=NAME),
    /// unless -R names it: then this is NAME.
    #[arg(value_name = "REPO")]
    pub repo: Option<std::ffi::OsString>,

    /// The setting to show or change.
    #[arg(value_name = "NAME")]
    pub name: Option<std::ffi::OsString>,

    /// The new value (on/off for switches, seconds for times, a path for files).
    #[arg(value_name = "VALUE")]
    pub value: Option<std::ffi::OsString>,

    /// Remove the stored value, so the default applies again.
    #[arg(long)]
    pub unset: bool,

    /// Read the new value from this file (`-`: standard input) instead of
    /// VALUE, so a secret (email-send-relay-password) never shows in `ps`;
    /// one line end at its end is dropped.
    #[arg(long, value_name = "FILE", conflicts_with = "unset")]
    pub value_file: Option<PathBuf>,

    /// The repository, as Fossil's -R (then the arguments are NAME VALUE).
    #[arg(short = 'R', long = "repository", value_name = "REPO")]
    pub repository: Option<PathBuf>,
}

/// `backoffice status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,

    /// The repository: an SQLite file, or a PostgreSQL schema as postgres://USER@HOST/DB?schema=NAME.
    #[arg(short = 'R', long = "repository", value_name = "REPO")]
    pub repository: Option<PathBuf>,

    /// The repository, as a plain argument.
    #[arg(value_name = "REPO", conflicts_with = "repository")]
    pub repo: Option<PathBuf>,
}

/// `backoffice trigger`
#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// The repository: an SQLite file, or a PostgreSQL schema as postgres://USER@HOST/DB?schema=NAME.
    #[arg(value_name = "REPO", required_unless_present = "repository")]
    pub repo: Option<PathBuf>,

    /// The repository, as Fossil's -R.
    #[arg(
        short = 'R',
        long = "repository",
        value_name = "REPO",
        conflicts_with = "repo"
    )]
    pub repository: Option<PathBuf>,

    /// Print nothing.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `backoffice worker`
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Where to report failures (the trigger passes the repository's backoffice-logfile).
    #[arg(long, value_name = "FILE")]
    pub logfile: Option<PathBuf>,

    /// The repository.
    #[arg(value_name = "REPO")]
    pub repo: PathBuf,
}

/// `backoffice publish`
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The repository: an SQLite file, or a PostgreSQL schema as postgres://USER@HOST/DB?schema=NAME.
    #[arg(value_name = "REPO")]
    pub repo: Option<PathBuf>,

    /// The repository, as Fossil's -R.
    #[arg(short = 'R', long = "repository", value_name = "REPO")]
    pub repository: Option<PathBuf>,

    /// The kind of event (lowercase word, e.g. checkin, wiki, ticket); subscribers filter on it.
    #[arg(long, value_name = "KIND")]
    pub kind: String,

    /// One line saying what happened.
    #[arg(long, value_name = "TEXT")]
    pub title: String,

    /// More text.
    #[arg(long, value_name = "TEXT", conflicts_with = "body_file")]
    pub body: Option<String>,

    /// Read the body from a file (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,

    /// A link to the thing itself.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// Who did it.
    #[arg(long, value_name = "NAME")]
    pub author: Option<String>,

    /// Only publish; do not run the after-request check.
    #[arg(long)]
    pub no_trigger: bool,
}

/// `backoffice subscriber`
#[derive(Debug, Args)]
#[command(subcommand_precedence_over_arg = true)]
pub struct SubscriberArgs {
    /// The repository, right after `subscriber` and before what to do
    /// (`backoffice subscriber app.db list`); or -R REPO anywhere. A file named like
    /// an action is written with its folder (`./list`).
    #[arg(value_name = "REPO")]
    pub repo: Option<PathBuf>,

    /// The repository (SQLite file, or `postgres://…?schema=NAME`).
    #[arg(short = 'R', long = "repository", value_name = "REPO", global = true)]
    pub repository: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub action: SubscriberAction,
}

/// What `backoffice subscriber` does.
#[derive(Debug, Subcommand)]
pub enum SubscriberAction {
    /// Add a subscriber (with a fresh random unsubscribe code).
    Add {
        /// The email address.
        address: String,
        /// Kinds of event wanted, comma-separated, or * for all.
        #[arg(long, value_name = "KINDS", default_value = "*")]
        kinds: String,
        /// One daily digest instead of immediate alerts.
        #[arg(long)]
        digest: bool,
        /// Mark the address as verified now (otherwise it gets nothing until verified).
        #[arg(long)]
        verified: bool,
        /// Send the address the sign-up confirmation email (through the outbox;
        /// the link works for email-signup-link-lifetime hours): it gets
        /// nothing until its owner follows the link. SQLite repositories only.
        #[arg(long, conflicts_with = "verified")]
        confirm: bool,
        /// A display name.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// List subscribers.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one subscriber (by address or id).
    Show {
        /// Address or id.
        who: String,
    },
    /// Remove a subscriber (by address or id).
    Remove {
        /// Address or id.
        who: String,
    },
    /// Change a subscriber (by address or id).
    Set {
        /// Address or id.
        who: String,
        /// Kinds of event wanted, comma-separated, or * for all.
        #[arg(long, value_name = "KINDS")]
        kinds: Option<String>,
        /// Daily digest (on) or immediate alerts (off).
        #[arg(long, value_name = "on|off")]
        digest: Option<String>,
        /// Verified (on) or not (off).
        #[arg(long, value_name = "on|off")]
        verified: Option<String>,
        /// Unsubscribed (on: nothing is sent) or subscribed (off).
        #[arg(long, value_name = "on|off")]
        unsubscribed: Option<String>,
        /// A display name (empty to clear).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
}

/// `backoffice outbox`
#[derive(Debug, Args)]
#[command(subcommand_precedence_over_arg = true)]
pub struct OutboxArgs {
    /// The repository, right after `outbox` and before what to do
    /// (`backoffice outbox app.db list`); or -R REPO anywhere. A file named like
    /// an action is written with its folder (`./list`).
    #[arg(value_name = "REPO")]
    pub repo: Option<PathBuf>,

    /// The repository (SQLite file, or `postgres://…?schema=NAME`).
    #[arg(short = 'R', long = "repository", value_name = "REPO", global = true)]
    pub repository: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub action: OutboxAction,
}

/// What `backoffice outbox` does.
#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// List messages, newest first.
    List {
        /// Only queued messages.
        #[arg(long, conflicts_with_all = ["sent", "dead"])]
        queued: bool,
        /// Only sent messages.
        #[arg(long, conflicts_with = "dead")]
        sent: bool,
        /// Only dead messages (given up on, with their reason).
        #[arg(long)]
        dead: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queue dead messages again, due now, with their attempts reset.
    Retry {
        /// One message id; without it, every dead message.
        id: Option<i64>,
    },
    /// Delete sent messages older than --days (and dead ones with --dead).
    Purge {
        /// Keep sent messages younger than this many days.
        #[arg(long, default_value_t = 30)]
        days: i64,
        /// Delete dead messages too.
        #[arg(long)]
        dead: bool,
    },
}

/// `backoffice hook`
#[derive(Debug, Args)]
#[command(subcommand_precedence_over_arg = true)]
pub struct HookArgs {
    /// The repository, right after `hook` and before what to do
    /// (`backoffice hook app.db list`); or -R REPO anywhere. A file named like
    /// an action is written with its folder (`./list`).
    #[arg(value_name = "REPO")]
    pub repo: Option<PathBuf>,

    /// The repository (SQLite file, or `postgres://…?schema=NAME`).
    #[arg(short = 'R', long = "repository", value_name = "REPO", global = true)]
    pub repository: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub action: HookAction,
}

/// What `backoffice hook` does.
#[derive(Debug, Subcommand)]
pub enum HookAction {
    /// Add a hook. It starts from the newest event unless --from-start.
    Add {
        /// The command, run with /bin/sh -c; %R and %F are substituted.
        #[arg(long, value_name = "CMD")]
        command: String,
        /// Its place in the order (hooks run in increasing seq) [default: after the others].
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        seq: Option<i64>,
        /// The hook type: after-event (after-receive is a synonym); other types are kept but never run.
        #[arg(long = "type", value_name = "TYPE", default_value = "after-event")]
        kind: String,
        /// Give it every event already published, not only new ones.
        #[arg(long)]
        from_start: bool,
    },
    /// List hooks in run order with their cursor and state.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a hook.
    Edit {
        /// The hook id (see `hook list`).
        id: i64,
        /// A new command.
        #[arg(long, value_name = "CMD")]
        command: Option<String>,
        /// A new seq.
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        seq: Option<i64>,
        /// A new type.
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
    },
    /// Remove a hook and its state.
    Remove {
        /// The hook id.
        id: i64,
    },
    /// Run a hook once on the newest events (or a sample event), without
    /// moving its cursor; print its exit status and output.
    Test {
        /// The hook id.
        id: i64,
    },
    /// Pause a hook: it runs no more until resumed; its cursor is kept, so
    /// it gets every event it missed.
    Pause {
        /// The hook id.
        id: i64,
    },
    /// Resume a paused or backing-off hook: due now, failures reset.
    #[command(visible_alias = "retry")]
    Resume {
        /// The hook id.
        id: i64,
    },
}

/// `backoffice schedule`
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// The repository, right after `schedule` and before what to do
    /// (`backoffice schedule app.db list`); or -R REPO anywhere. A file named
    /// like an action is written with its folder (`./list`).
    #[arg(value_name = "REPO")]
    pub repo: Option<PathBuf>,

    /// The repository (SQLite file, or `postgres://…?schema=NAME`).
    #[arg(short = 'R', long = "repository", value_name = "REPO", global = true)]
    pub repository: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub action: ScheduleAction,
}

/// What `backoffice schedule` does.
#[derive(Debug, Subcommand)]
pub enum ScheduleAction {
    /// Add a schedule: a command to run, or an event to publish, once per slot.
    ///
    /// Slots are the minutes a cron pattern matches on a time zone's wall
    /// clock (a slot in a daylight-saving gap runs at the jump, one in a
    /// fold once), or the multiples of an interval since 1970-01-01 00:00
    /// UTC. The first slot is the first after now. A slot is found due by
    /// the after-request check and by cron sweeps with nothing written, and
    /// run by the worker holding the lease.
    Add {
        /// Its name: 1 to 64 letters, digits, '.', '_' or '-'.
        name: String,
        /// A five-field cron pattern (minute hour day-of-month month
        /// day-of-week, e.g. "0 3 * * *"), or @hourly, @daily, @weekly,
        /// @monthly, @yearly.
        #[arg(
            long,
            value_name = "PATTERN",
            conflicts_with = "every",
            required_unless_present = "every"
        )]
        cron: Option<String>,
        /// The time zone whose wall clock the pattern reads (an IANA name such as Europe/Paris) [default: UTC].
        #[arg(long, value_name = "ZONE", requires = "cron")]
        tz: Option<String>,
        /// A plain interval instead of a pattern: 90s, 15m, 1h, 2d (runs still come at most once per lease time).
        #[arg(long, value_name = "INTERVAL")]
        every: Option<String>,
        /// The command to run at each slot, with /bin/sh -c (%R and %F are
        /// substituted as for hooks; BACKOFFICE_SLOT, BACKOFFICE_SLOT_TIME,
        /// BACKOFFICE_SCHEDULE and BACKOFFICE_MISSED_SLOTS are set).
        #[arg(
            long,
            value_name = "CMD",
            conflicts_with = "event",
            required_unless_present = "event"
        )]
        command: Option<String>,
        /// Publish an event of this kind at each slot instead (alerts, hooks and webhooks react to it).
        #[arg(long, value_name = "KIND")]
        event: Option<String>,
        /// After slots were missed (nothing ran for a while): `once` runs one
        /// run for all of them, `skip` runs none and waits for the next slot.
        #[arg(long, value_name = "RULE", default_value = "once", value_parser = ["once", "skip"])]
        catch_up: String,
    },
    /// List the schedules: timing, next slot, last slot and how it went.
    List {
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Show one schedule, with its last output.
    Show {
        /// The schedule's name.
        name: String,
    },
    /// Remove a schedule (a run in progress finishes; nothing more is recorded).
    Remove {
        /// The schedule's name.
        name: String,
    },
    /// Pause a schedule: its slots pass without runs (when resumed, they
    /// count as missed, by its catch-up rule).
    Pause {
        /// The schedule's name.
        name: String,
    },
    /// Resume a paused schedule.
    Resume {
        /// The schedule's name.
        name: String,
    },
    /// Run a schedule once now (paused or not) without using up a slot:
    /// the request is stored and a worker is started for it.
    Run {
        /// The schedule's name.
        name: String,
    },
}

/// `backoffice webhook`
#[derive(Debug, Args)]
#[command(subcommand_precedence_over_arg = true)]
pub struct WebhookArgs {
    /// The repository, right after `webhook` and before what to do
    /// (`backoffice webhook app.db list`); or -R REPO anywhere. A file named like
    /// an action is written with its folder (`./list`).
    #[arg(value_name = "REPO")]
    pub repo: Option<PathBuf>,

    /// The repository (SQLite file, or `postgres://…?schema=NAME`).
    #[arg(short = 'R', long = "repository", value_name = "REPO", global = true)]
    pub repository: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub action: WebhookAction,
}

/// What `backoffice webhook` does.
#[derive(Debug, Subcommand)]
pub enum WebhookAction {
    /// Add an endpoint; it gets the events published from now on.
    Add {
        /// Where to POST (http:// or https://).
        url: String,
        /// The HMAC-SHA256 key receivers verify signatures with: at least 16
        /// characters, or a Standard Webhooks secret `whsec_…` (see `webhook
        /// secret`). On the command line it shows in `ps`: prefer
        /// --secret-file or $BACKOFFICE_WEBHOOK_SECRET.
        #[arg(long, value_name = "SECRET", conflicts_with = "secret_file")]
        secret: Option<String>,
        /// Read the secret from this file (`-`: standard input); one line
        /// end at its end is dropped. Without --secret or --secret-file,
        /// $BACKOFFICE_WEBHOOK_SECRET is the secret.
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
        /// Kinds of event wanted, comma-separated, or * for all.
        #[arg(long, value_name = "KINDS", default_value = "*")]
        kinds: String,
        /// Also deliver every event already published.
        #[arg(long)]
        from_start: bool,
    },
    /// List endpoints (secrets masked).
    List {
        /// Print JSON (without secrets).
        #[arg(long)]
        json: bool,
    },
    /// Remove an endpoint.
    Remove {
        /// The endpoint id.
        id: i64,
    },
    /// Send one signed test delivery (kind `test`) and print the HTTP status.
    Test {
        /// The endpoint id.
        id: i64,
    },
    /// Make a dead (or backing-off) endpoint active and due now; nothing is skipped.
    Retry {
        /// The endpoint id.
        id: i64,
    },
    /// Print a new random secret in the Standard Webhooks form (`whsec_` and
    /// base64 of 32 bytes) for `add --secret`; nothing is stored.
    Secret,
    /// Pause an endpoint: nothing is delivered until `webhook resume`; its
    /// cursor is kept, so nothing is skipped.
    Pause {
        /// The endpoint id.
        id: i64,
    },
    /// Resume a paused, dead or backing-off endpoint (the same as retry).
    Resume {
        /// The endpoint id.
        id: i64,
    },
}

/// Limits for the web front (shared by `serve` and `cgi`).
#[derive(Debug, Args, Clone)]
pub struct WebLimitArgs {
    /// Largest request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_body: usize,

    /// Seconds allowed to send a request body.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub body_timeout: u64,
}

/// `backoffice serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// One repository: an SQLite file, or a postgres:// URL
    /// (`?schema=NAME`); with --repolist a directory of files, or a
    /// database URL.
    #[arg(value_name = "PATH|URL")]
    pub path: PathBuf,

    /// Serve every SQLite file in the directory PATH (Fossil's --repolist),
    /// or every repository schema of the database URL (new ones appear
    /// within seconds).
    #[arg(long)]
    pub repolist: bool,

    /// Address and port to listen on; port 0 picks a free one. Anything but
    /// loopback exposes the status pages to that network.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Never run the after-request check (for setups where cron runs
    /// `backoffice run --poll`).
    #[arg(long)]
    pub no_trigger: bool,

    /// Seconds a client has to send a request's headers; also how long an
    /// idle keep-alive connection is kept.
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    pub header_timeout: u64,

    /// Most connections served at once.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,

    /// Most connections from one client address at once; more are refused
    /// (default: a quarter of --max-connections; raise it behind a reverse
    /// proxy, where every client has the proxy's address).
    #[arg(long, value_name = "N")]
    pub max_connections_per_client: Option<usize>,

    /// Request limits.
    #[command(flatten)]
    pub limits: WebLimitArgs,

    /// Take copies pushed by peers (`PUT /replica/NAME`) into this folder,
    /// as NAME.db with older generations NAME.db.1, ...; needs --replica-token-file.
    #[arg(long, value_name = "DIR", requires = "replica_token_file")]
    pub replica_dir: Option<PathBuf>,

    /// A file holding the token peers must send to push a copy (16 characters or more).
    #[arg(long, value_name = "FILE", requires = "replica_dir")]
    pub replica_token_file: Option<PathBuf>,

    /// Generations of each pushed replica to keep.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub replica_keep: u32,

    /// Largest copy a peer may push, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 40)]
    pub max_replica_bytes: u64,

    /// Write a line per request — time (UTC), client, method, path without
    /// the query, status, milliseconds — to stderr (`-`) or appended to
    /// FILE, which also gets the start-up and shutdown lines (those always
    /// go to stderr too).
    #[arg(long, value_name = "FILE|-")]
    pub access_log: Option<PathBuf>,

    /// Stop after this many seconds (for scripts and tests).
    #[arg(long, value_name = "SECS", hide = true)]
    pub exit_after: Option<u64>,
}

/// `backoffice cgi`
#[derive(Debug, Args)]
pub struct CgiArgs {
    /// Serve every SQLite file in this directory, or every repository
    /// schema of this postgres:// database (otherwise $BACKOFFICE_REPO
    /// names the one repository).
    #[arg(long, value_name = "DIR|URL")]
    pub repolist: Option<PathBuf>,

    /// Request limits.
    #[command(flatten)]
    pub limits: WebLimitArgs,
}

/// `backoffice maintain`
#[derive(Debug, Args)]
pub struct MaintainArgs {
    /// The repository (SQLite file).
    #[arg(short = 'R', long = "repository", value_name = "REPO")]
    pub repository: Option<PathBuf>,

    /// The repository, as a plain argument.
    #[arg(value_name = "REPO", conflicts_with = "repository")]
    pub repo: Option<PathBuf>,

    /// Run every step that is on now, ignoring schedules and thresholds.
    #[arg(long)]
    pub now: bool,

    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `backoffice token`
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The repository: an SQLite file, or a PostgreSQL schema as postgres://USER@HOST/DB?schema=NAME.
    #[arg(short = 'R', long = "repository", value_name = "REPO")]
    pub repository: Option<PathBuf>,

    /// The repository, as a plain argument.
    #[arg(value_name = "REPO", conflicts_with = "repository")]
    pub repo: Option<PathBuf>,

    /// Remove the token: the API refuses every request until a new one is made.
    #[arg(long)]
    pub revoke: bool,

    /// Say whether a token is set, without changing it.
    #[arg(long, conflicts_with = "revoke")]
    pub check: bool,

    /// The read-only metrics token instead: it opens only `/metrics` (this
    /// repository's series) to a scraper.
    #[arg(long)]
    pub metrics: bool,
}

/// `backoffice demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo lives (made if missing): demo.db, mail/, backoffice.log.
    #[arg(value_name = "DIR", default_value = "backoffice-demo")]
    pub dir: PathBuf,

    /// Address and port to listen on; port 0 picks a free one.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Start over: delete the demo's database, mail and log first.
    #[arg(long)]
    pub fresh: bool,

    /// Stop after this many seconds (for scripts and tests).
    #[arg(long, value_name = "SECS", hide = true)]
    pub exit_after: Option<u64>,
}

/// `backoffice peer`
#[derive(Debug, Args)]
#[command(subcommand_precedence_over_arg = true)]
pub struct PeerArgs {
    /// The repository, right after `peer` and before what to do
    /// (`backoffice peer app.db sync`); or -R REPO anywhere. A file named like
    /// an action is written with its folder (`./list`).
    #[arg(value_name = "REPO")]
    pub repo: Option<PathBuf>,

    /// The repository (SQLite file).
    #[arg(short = 'R', long = "repository", value_name = "REPO", global = true)]
    pub repository: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub action: PeerAction,
}

/// What `backoffice peer` does.
#[derive(Debug, Subcommand)]
pub enum PeerAction {
    /// Add a peer: the absolute path of a replica file (its folder must
    /// exist), or the replica URL of another `backoffice serve` with its token.
    Add {
        /// Where the replica goes: /backup/app.db (older copies: app.db.1,
        /// app.db.2, ...), or https://peer.example.org/replica/app.
        target: String,
        /// The peer server's replica token (HTTP peers; see `serve
        /// --replica-dir`). On the command line it shows in `ps`: prefer
        /// --token-file or $BACKOFFICE_PEER_TOKEN.
        #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
        token: Option<String>,
        /// Read the token from this file (`-`: standard input); one line
        /// end at its end is dropped. Without --token or --token-file, an
        /// HTTP peer's token is $BACKOFFICE_PEER_TOKEN.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// List peers and how replication to each went.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a peer (by id or target); its replicas stay where they are.
    Remove {
        /// Id or target.
        who: String,
    },
    /// Copy to every peer (or one) now, whatever the schedule, if the
    /// application wrote since that peer's last copy.
    Sync {
        /// Id or target (default: every peer).
        who: Option<String>,
        /// Copy even if nothing changed.
        #[arg(long)]
        force: bool,
    },
}

/// `backoffice guard-child`
#[derive(Debug, Args)]
pub struct GuardChildArgs {
    /// The read end of the worker's life pipe.
    pub fd: i32,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<std::ffi::OsString>,
}

/// `backoffice guard-temp`
#[derive(Debug, Args)]
pub struct GuardTempArgs {
    /// The copier's pid.
    pub pid: i64,
    /// Its start time (clock ticks since boot; 0: unknown).
    pub start: u64,
    /// The temporary file.
    pub file: PathBuf,
}

/// `backoffice completions`
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `backoffice man`
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `backoffice.1` and one `backoffice-COMMAND.1` per command into
    /// this folder (e.g. /usr/local/share/man/man1) instead of printing
    /// `backoffice.1`.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}
