//! The `seshat` command: serve, demo, replay, backfill.

use clap::{Args, Parser, Subcommand};
use seshat::connect::{self, SlackApi};
use seshat::demo::Demo;
use seshat::engine::{Engine, Outcome};
use seshat::model::Config;
use seshat::server::{self, App, Clock, Settings};
use seshat::slack;
use seshat::store::{self, Store, SyncPolicy};
use seshat::time::{Micros, DAY};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Live support analytics for Slack help channels.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the API for real Slack channels (Events API at POST /slack/events).
    Serve(Common),
    /// Serve the API fed by a built-in simulated help channel (no Slack needed).
    Demo(Common),
    /// Apply a file of Events API bodies (one JSON per line) and print /api/stats_v2.
    Replay {
        /// The JSONL file.
        file: PathBuf,
        /// Keep serving the result instead of exiting.
        #[arg(long)]
        serve: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Read the help channels' history from Slack (SLACK_BOT_TOKEN) and apply it,
    /// then print /api/stats_v2.
    Backfill {
        /// Read top-level messages from this ISO 8601 instant on.
        #[arg(long)]
        since: String,
        /// Stop at this ISO 8601 instant (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Keep serving the result instead of exiting.
        #[arg(long)]
        serve: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Look at a data directory's snapshots and journals.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
}

#[derive(Subcommand, Debug)]
enum SnapshotAction {
    /// Print a snapshot's (or journal's) header, counts and time range.
    Inspect {
        /// A snapshot or journal file.
        file: PathBuf,
    },
    /// Check every snapshot and journal of a data directory (read-only).
    Verify {
        /// The data directory.
        #[arg(long, env = "DATA_DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Address to listen on (default 0.0.0.0:$PORT).
    #[arg(long, env = "LISTEN")]
    listen: Option<SocketAddr>,
    /// Port, when --listen is not given.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    port: u16,
    /// Slack signing secret for the Events API endpoint.
    #[arg(long, env = "SLACK_SIGNING_SECRET", hide_env_values = true)]
    signing_secret: Option<String>,
    /// Slack bot token (xoxb-…), for the helper roster and backfill.
    #[arg(long, env = "SLACK_BOT_TOKEN", hide_env_values = true)]
    bot_token: Option<String>,
    /// Slack app-level token (xapp-…), for Socket Mode.
    #[arg(long, env = "SLACK_APP_TOKEN", hide_env_values = true)]
    app_token: Option<String>,
    /// Help channel ids, comma-separated.
    #[arg(long, env = "SLACK_HELP_CHANNEL", value_delimiter = ',')]
    help_channel: Vec<String>,
    /// The team channel whose members are helpers.
    #[arg(long, env = "SLACK_BTS_CHANNEL")]
    bts_channel: Option<String>,
    /// Close tickets idle for this many days.
    #[arg(long, env = "STALE_TICKET_DAYS")]
    stale_ticket_days: Option<u32>,
    /// Helper Slack user ids, comma-separated.
    #[arg(long, env = "HELPERS", value_delimiter = ',')]
    helpers: Vec<String>,
    /// Slack user ids of bots allowed to resolve and reopen, comma-separated.
    #[arg(long, env = "TRUSTED_BOTS", value_delimiter = ',')]
    trusted_bots: Vec<String>,
    /// Macro names that resolve a ticket besides ?resolve and ?close.
    #[arg(long, env = "RESOLVING_MACROS", value_delimiter = ',')]
    resolving_macros: Option<Vec<String>>,
    /// The reaction that resolves a ticket.
    #[arg(long, env = "RESOLUTION_REACTION", default_value = "white_check_mark")]
    resolution_reaction: String,
    /// Workspace subdomain used in ticket links.
    #[arg(long, env = "SLACK_WORKSPACE", default_value = "hackclub")]
    workspace: String,
    /// Directory for snapshots and the journal.
    #[arg(long, env = "DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Freeze the stats clock at this ISO 8601 instant.
    #[arg(long, env = "SESHAT_NOW")]
    now: Option<String>,
    /// Serve every description as an empty string.
    #[arg(long, env = "HIDE_DESCRIPTIONS", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    hide_descriptions: bool,
    /// Minutes between two reads of the team channel's members (with SLACK_BOT_TOKEN).
    #[arg(long, env = "ROSTER_SYNC_MINUTES", default_value_t = 60)]
    roster_sync_minutes: u64,
    /// Requests per minute for conversations.history/replies (default: Slack's Tier 3, 50).
    #[arg(long, env = "SLACK_HISTORY_RATE")]
    history_rate: Option<u32>,
    /// At start-up with SLACK_BOT_TOKEN, read what Slack has since the newest applied event.
    #[arg(long, env = "SLACK_CATCH_UP", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    catch_up: bool,
    /// Group-commit the journal every N ms instead of fsyncing before each acknowledgement (0 = fsync each).
    #[arg(long, env = "JOURNAL_GROUP_COMMIT_MS", default_value_t = 0)]
    journal_group_commit_ms: u64,
    /// Write a snapshot at least this often (seconds) while events arrive.
    #[arg(long, env = "SNAPSHOT_EVERY_SECS", default_value_t = 300)]
    snapshot_every_secs: u64,
    /// Write a snapshot after this many journal records.
    #[arg(long, env = "SNAPSHOT_EVERY_EVENTS", default_value_t = 10_000)]
    snapshot_every_events: u64,
}

/// A configuration problem: reported on stderr with exit code 2.
#[derive(Debug)]
struct ConfigError(String);

fn slack_id_ok(id: &str, prefixes: &[char]) -> bool {
    id.len() >= 3
        && id.starts_with(prefixes)
        && id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

impl Common {
    fn clock(&self) -> Result<Clock, ConfigError> {
        match self.now.as_deref().filter(|s| !s.is_empty()) {
            None => Ok(Clock::Wall),
            Some(s) => Micros::parse_iso(s).map(Clock::Fixed).map_err(|_| {
                ConfigError(format!(
                    "--now / SESHAT_NOW: not an ISO 8601 instant: {s:?}"
                ))
            }),
        }
    }

    fn engine_config(&self) -> Result<Config, ConfigError> {
        let clean = |v: &[String]| -> Vec<String> {
            v.iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let help_channels = clean(&self.help_channel);
        for c in help_channels.iter().chain(self.bts_channel.iter()) {
            if !slack_id_ok(c, &['C', 'G']) {
                return Err(ConfigError(format!(
                    "malformed channel id {c:?}: expected a Slack channel id such as C0123ABCD"
                )));
            }
        }
        for u in clean(&self.helpers)
            .iter()
            .chain(clean(&self.trusted_bots).iter())
        {
            if !slack_id_ok(u, &['U', 'W', 'B']) {
                return Err(ConfigError(format!(
                    "malformed user id {u:?}: expected a Slack user id such as U0123ABCD"
                )));
            }
        }
        let mut config = Config {
            help_channels,
            team_channel: self.bts_channel.clone().filter(|s| !s.is_empty()),
            helpers: clean(&self.helpers),
            trusted_bots: clean(&self.trusted_bots),
            resolution_reaction: self.resolution_reaction.trim_matches(':').to_string(),
            stale_after_days: self.stale_ticket_days.filter(|d| *d > 0),
            workspace: self.workspace.clone(),
            ..Config::default()
        };
        if let Some(m) = &self.resolving_macros {
            config.resolving_macros = clean(m).into_iter().map(|s| s.to_lowercase()).collect();
        }
        Ok(config)
    }

    fn settings(&self) -> Settings {
        Settings {
            signing_secret: self.signing_secret.clone().filter(|s| !s.is_empty()),
            hide_descriptions: self.hide_descriptions,
            ..Settings::default()
        }
    }

    fn bot_token(&self) -> Option<&str> {
        self.bot_token.as_deref().filter(|s| !s.is_empty())
    }

    fn app_token(&self) -> Option<&str> {
        self.app_token.as_deref().filter(|s| !s.is_empty())
    }

    fn api_options(&self) -> connect::ApiOptions {
        connect::ApiOptions {
            history_per_minute: self.history_rate,
            ..connect::ApiOptions::default()
        }
    }

    fn addr(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.port)))
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(ConfigError(m))) => {
            eprintln!("configuration error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(m)) => {
            eprintln!("error: {m}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Config(ConfigError),
    Runtime(String),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve(common) => {
            let config = common.engine_config()?;
            if config.help_channels.is_empty() {
                return Err(ConfigError("SLACK_HELP_CHANNEL is required for serve".into()).into());
            }
            if common.signing_secret.as_deref().unwrap_or("").is_empty()
                && common.app_token().is_none()
            {
                return Err(ConfigError(
                    "SLACK_SIGNING_SECRET (Events API: Slack app → Basic Information → Signing Secret) or SLACK_APP_TOKEN (Socket Mode) is required for serve"
                        .into(),
                )
                .into());
            }
            let clock = common.clock()?;
            let (app, store) = open_app(&common, config, clock)?;
            // Slack is contacted beside the listener, never before it.
            let slack = tokio::spawn(start_slack(app.clone(), common.clone()));
            let served = listen_durably(app, store, &common).await;
            if slack.is_finished() {
                if let Ok(Some(socket)) = slack.await {
                    socket.shutdown().await;
                }
            } else {
                slack.abort();
            }
            served
        }
        Command::Demo(common) => {
            let clock = common.clock()?;
            let mut config = seshat::demo::config();
            config.workspace = common.workspace.clone();
            if common.workspace == "hackclub" {
                config.workspace = "demo".into();
            }
            let app = Arc::new(App::new(Engine::new(config), clock, common.settings()));
            let now = clock.now();
            let mut demo = Demo::new(now.plus(-14 * DAY), 42);
            let history = demo.until(now);
            for d in &history {
                app.ingest(d).map_err(|e| Failure::Runtime(e.to_string()))?;
            }
            tracing::info!(
                events = history.len(),
                "demo: back-filled two weeks of history"
            );
            if clock == Clock::Wall {
                let live = app.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tick.tick().await;
                        for d in demo.until(Micros::now()) {
                            let _ = live.ingest(&d);
                        }
                    }
                });
            }
            listen(app, common.addr()).await
        }
        Command::Replay {
            file,
            serve,
            common,
        } => {
            let config = common.engine_config()?;
            let clock = common.clock()?;
            let (app, store) = open_app(&common, config, clock)?;
            replay(&app, &file)?;
            if serve {
                listen_durably(app, store, &common).await
            } else {
                final_snapshot(&app, store.as_deref());
                let json = app.stats_v2_json(0, clock.now());
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&json);
                let _ = out.write_all(b"\n");
                Ok(())
            }
        }
        Command::Snapshot { action } => {
            let report = match action {
                SnapshotAction::Inspect { file } => store::inspect(&file),
                SnapshotAction::Verify { data_dir } => store::verify(&data_dir),
            };
            match report {
                Ok(text) => {
                    println!("{text}");
                    Ok(())
                }
                Err(e) => Err(Failure::Runtime(e.to_string())),
            }
        }
        Command::Backfill {
            since,
            until,
            serve,
            common,
        } => {
            let (app, store) = backfill(&common, &since, until.as_deref()).await?;
            if serve {
                listen_durably(app, store, &common).await
            } else {
                final_snapshot(&app, store.as_deref());
                let json = app.stats_v2_json(0, app.clock.now());
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&json);
                let _ = out.write_all(b"\n");
                Ok(())
            }
        }
    }
}

/// `serve`'s Slack clients, as the tokens allow: Socket Mode (SLACK_APP_TOKEN);
/// the helper roster, a catch-up backfill and the periodic roster (SLACK_BOT_TOKEN).
/// A Slack problem is logged on one line and the server keeps serving.
async fn start_slack(app: Arc<App>, common: Common) -> Option<connect::SocketMode> {
    if common.app_token().is_none() && common.bot_token().is_none() {
        return None;
    }
    let live_since = Micros::now();
    let client = match connect::https_client(&common.api_options()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot set up the Slack client (TLS roots): {e}");
            return None;
        }
    };
    let socket = match common.app_token() {
        None => None,
        Some(token) => {
            let opts = connect::SocketOptions::default();
            match connect::start_socket_mode(app.clone(), client.clone(), token, opts).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!("Socket Mode: {e}");
                    None
                }
            }
        }
    };
    if let Some(token) = common.bot_token() {
        match SlackApi::connect(client, token, common.api_options()).await {
            Ok(api) => {
                connect::spawn_start_up(
                    app.clone(),
                    Arc::new(api),
                    common.bts_channel.clone().filter(|c| !c.is_empty()),
                    Duration::from_secs(common.roster_sync_minutes.max(1) * 60),
                    common.catch_up,
                    live_since,
                );
            }
            Err(e) => tracing::error!("{e}"),
        }
    } else if common.bts_channel.is_some() {
        tracing::info!("SLACK_BTS_CHANNEL without SLACK_BOT_TOKEN: helpers come from HELPERS and member events only");
    }
    socket
}

async fn backfill(
    common: &Common,
    since: &str,
    until: Option<&str>,
) -> Result<(Arc<App>, Option<Arc<Store>>), Failure> {
    let config = common.engine_config()?;
    if config.help_channels.is_empty() {
        return Err(ConfigError("SLACK_HELP_CHANNEL is required for backfill".into()).into());
    }
    let Some(token) = common.bot_token() else {
        return Err(ConfigError(
            "SLACK_BOT_TOKEN is required for backfill (Slack app → OAuth & Permissions → Bot User OAuth Token)"
                .into(),
        )
        .into());
    };
    let iso = |name: &str, s: &str| {
        Micros::parse_iso(s)
            .map_err(|_| ConfigError(format!("{name}: not an ISO 8601 instant: {s:?}")))
    };
    let since = iso("--since", since)?;
    let until = until.map(|u| iso("--until", u)).transpose()?;
    let clock = common.clock()?;
    let channels = config.help_channels.clone();
    let team = config.team_channel.clone();
    let (app, store) = open_app(common, config, clock)?;
    let client = connect::https_client(&common.api_options()).map_err(|e| {
        Failure::Runtime(format!("cannot set up the Slack client (TLS roots): {e}"))
    })?;
    let api = SlackApi::connect(client, token, common.api_options())
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    if let Some(team) = team {
        connect::sync_roster(&app, &api, &team)
            .await
            .map_err(|e| Failure::Runtime(e.to_string()))?;
    }
    let opts = connect::BackfillOptions {
        until,
        ..connect::BackfillOptions::since(since)
    };
    connect::backfill_with(&app, &api, &channels, &opts)
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    Ok((app, store))
}

fn replay(app: &App, file: &PathBuf) -> Result<(), Failure> {
    let f = std::fs::File::open(file)
        .map_err(|e| Failure::Runtime(format!("cannot open {}: {e}", file.display())))?;
    let total = f.metadata().map(|m| m.len()).unwrap_or(0).max(1);
    let reader = std::io::BufReader::new(f);
    let started = Instant::now();
    let mut last_report = Instant::now();
    let (mut applied, mut ignored, mut rejected, mut read_bytes) = (0u64, 0u64, 0u64, 0u64);
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| Failure::Runtime(format!("read error: {e}")))?;
        read_bytes += line.len() as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        match slack::decode(line.as_bytes()) {
            Ok(slack::Body::Event(d)) => match app.ingest(&d) {
                Ok(Outcome::Applied) => applied += 1,
                Ok(_) => ignored += 1,
                Err(e) => return Err(Failure::Runtime(format!("journal: {e}"))),
            },
            Ok(slack::Body::Rejected { reason, .. }) => {
                eprintln!("line {}: rejected: {reason}", n + 1);
                rejected += 1;
            }
            Ok(_) => ignored += 1,
            Err(e) => {
                eprintln!("line {}: skipped: {e}", n + 1);
                rejected += 1;
            }
        }
        if last_report.elapsed() > Duration::from_secs(1) {
            last_report = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            let rate = (applied + ignored + rejected) as f64 / secs;
            let eta = secs * (total as f64 / read_bytes as f64 - 1.0);
            eprintln!(
                "replay: {:.0}% · {rate:.0} events/s · ETA {eta:.0}s",
                100.0 * read_bytes as f64 / total as f64
            );
        }
    }
    eprintln!("replay: {applied} applied, {ignored} ignored, {rejected} rejected");
    Ok(())
}

/// Builds the app, from `DATA_DIR` when set: newest valid snapshot, then the
/// journal after it; every later delivery is journaled before it is applied.
fn open_app(
    common: &Common,
    config: Config,
    clock: Clock,
) -> Result<(Arc<App>, Option<Arc<Store>>), Failure> {
    let Some(dir) = common.data_dir.as_ref() else {
        return Ok((
            Arc::new(App::new(Engine::new(config), clock, common.settings())),
            None,
        ));
    };
    let policy = SyncPolicy::from_millis(common.journal_group_commit_ms);
    let (store, recovered) = Store::open(dir, policy)
        .map_err(|e| Failure::Runtime(format!("data directory {}: {e}", dir.display())))?;
    // `recovered.warnings` were logged by the store as it repaired.
    let mut engine = match recovered.persisted {
        Some(p) => Engine::restore(config, p).map_err(|e| Failure::Runtime(e.to_string()))?,
        None => Engine::new(config),
    };
    let replayed = recovered.journal.len();
    for d in &recovered.journal {
        engine.apply(d);
    }
    tracing::info!(
        tickets = engine.ticket_count(),
        replayed,
        dir = %dir.display(),
        "state loaded"
    );
    let store = Arc::new(store);
    let journal = store.clone();
    let app = App::new(engine, clock, common.settings())
        .with_journal(Box::new(move |d| journal.append(d)));
    Ok((Arc::new(app), Some(store)))
}

/// Writes one snapshot: the journal is rotated and the state copied with
/// ingestion paused (so no delivery is journaled but not yet applied), then
/// encoded and written outside it.
fn write_snapshot(app: &App, store: &Store) -> Result<(), String> {
    let (rotation, persisted) = {
        let _paused = app.pause_ingest();
        let engine = app.engine();
        let rotation = store.rotate().map_err(|e| e.to_string())?;
        (rotation, engine.persisted())
    };
    let info = store
        .write_snapshot(rotation, &persisted)
        .map_err(|e| e.to_string())?;
    app.metrics
        .snapshot_duration
        .set(info.duration.as_secs_f64());
    app.metrics.snapshot_bytes.set(info.bytes as i64);
    // The store logs "snapshot written" with the same figures.
    Ok(())
}

fn final_snapshot(app: &App, store: Option<&Store>) {
    if let Some(store) = store {
        if let Err(e) = write_snapshot(app, store) {
            tracing::error!("final snapshot failed: {e}; the journal still holds every event");
        }
    }
}

/// Serves, snapshotting periodically and once more on graceful shutdown.
async fn listen_durably(
    app: Arc<App>,
    store: Option<Arc<Store>>,
    common: &Common,
) -> Result<(), Failure> {
    let Some(store) = store else {
        return listen(app, common.addr()).await;
    };
    let every = Duration::from_secs(common.snapshot_every_secs.max(1));
    let max_events = common.snapshot_every_events.max(1);
    let (task_app, task_store) = (app.clone(), store.clone());
    let snapshots = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last = Instant::now();
        loop {
            tick.tick().await;
            let pending = task_store.journal_len();
            task_app.metrics.journal_records.set(pending as i64);
            if let Some(meta) = task_store.last_snapshot() {
                let age = Micros::now().minutes_since(meta.header.written_at) * 60.0;
                task_app.metrics.snapshot_age.set(age);
                // Also right after a restart, before this process writes one.
                task_app.metrics.snapshot_bytes.set(meta.bytes as i64);
            }
            if pending == 0 || (pending < max_events && last.elapsed() < every) {
                continue;
            }
            last = Instant::now();
            let (a, s) = (task_app.clone(), task_store.clone());
            let ok = tokio::task::spawn_blocking(move || write_snapshot(&a, &s))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            if let Err(e) = &ok {
                tracing::error!("snapshot failed: {e}; the journal still holds every event");
            }
            task_app
                .snapshot_ok
                .store(ok.is_ok(), std::sync::atomic::Ordering::Relaxed);
        }
    });
    let served = listen(app.clone(), common.addr()).await;
    snapshots.abort();
    final_snapshot(&app, Some(&store));
    served
}

async fn listen(app: Arc<App>, addr: SocketAddr) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::Runtime(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    tracing::info!("listening on http://{local}/ (dashboard), http://{local}/api/stats_v2");
    server::serve(app, listener, shutdown_signal())
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
