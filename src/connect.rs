//! Slack connectivity beyond the Events API endpoint, all through slack-morphism:
//!
//! - **Socket Mode** ([`start_socket_mode`]): slack-morphism's Socket Mode
//!   connection manager (WebSocket client, `apps.connections.open`, ping/pong,
//!   reconnects) with a listener of ours that hands each raw `events_api` payload
//!   to [`crate::slack::decode_value`] and [`App::ingest`], exactly the path of
//!   `POST /slack/events` (dedupe, journal, apply), and acknowledges the envelope
//!   only once the delivery is durable.
//! - **Helper roster** ([`sync_roster`], [`spawn_roster`]): `auth.test` and every
//!   page of `conversations.members` of the team channel, applied as
//!   `member_joined_channel` / `member_left_channel` deliveries.
//! - **Helper names** ([`HelperNames`]): `users.info` of each helper, cached in
//!   the [`App`] for the dashboard (`/api/names`), refreshed after roster syncs.
//! - **Backfill** ([`backfill`]): every page of `conversations.history` of each help
//!   channel and of `conversations.replies` of each thread, turned into the same
//!   deliveries the Events API would have sent, applied in time order.
//!
//! Web API calls go through slack-morphism's client with its rate controller:
//! `Retry-After` on a `ratelimited` answer is honoured by its retry loop, and the
//! history methods (Tier 3) can be paced to a lower rate ([`ApiOptions`]).

use crate::engine::Outcome;
use crate::model::{Delivery, Event, Message, Status};
use crate::server::App;
use crate::slack::{self, Body as SlackBody};
use crate::text::macro_word;
use crate::time::Micros;
use async_trait::async_trait;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use serde_json::{json, Value};
use slack_morphism::api::{
    SlackApiAppsConnectionOpenRequest, SlackApiConversationsHistoryRequest,
    SlackApiConversationsMembersRequest, SlackApiConversationsRepliesRequest,
    SlackApiUsersInfoRequest,
};
use slack_morphism::clients_manager::{
    SlackSocketModeClientsManager, SlackSocketModeClientsManagerFactory,
};
use slack_morphism::errors::SlackClientError;
use slack_morphism::hyper_tokio::{SlackClientHyperConnector, SlackHyperHttpsConnector};
use slack_morphism::listener::SlackClientEventsListenerEnvironment;
use slack_morphism::prelude::{
    SlackApiMethodRateTier, SlackApiRateControlConfig, SlackApiRateControlLimit,
    SLACK_TIERS_DEFAULT_LIMITS_MAP,
};
use slack_morphism::{
    SlackApiScrollableRequest, SlackApiToken, SlackApiTokenValue, SlackChannelId, SlackClient,
    SlackClientSocketModeConfig, SlackHistoryMessage, SlackSocketModeClientListener,
    SlackSocketModeWssClientId, SlackTeamId, SlackTs, SlackUser, SlackUserId,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The slack-morphism client over a given hyper connector.
pub type Client<H> = SlackClient<SlackClientHyperConnector<H>>;

/// What every connector used here must be.
pub trait Connector: Send + Sync + Clone + Connect + 'static {}
impl<T: Send + Sync + Clone + Connect + 'static> Connector for T {}

// ---------------------------------------------------------------- errors

/// A Slack problem, explained on one line (which token, scope or channel to fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

impl ConnectError {
    fn journal(e: std::io::Error) -> Self {
        ConnectError(format!(
            "journal write failed, stopping so nothing is applied unrecorded: {e}"
        ))
    }
}

/// Turns a slack-morphism error into an actionable line. `token` names the
/// variable holding the token used, `channel` the channel the call was about.
fn explain(method: &str, token: &str, channel: Option<&str>, e: SlackClientError) -> ConnectError {
    let on = channel.map(|c| format!(" {c}")).unwrap_or_default();
    let msg = match &e {
        SlackClientError::ApiError(api) => {
            let needed = api
                .http_response_body
                .as_deref()
                .and_then(|b| serde_json::from_str::<Value>(b).ok())
                .and_then(|v| v.get("needed").and_then(Value::as_str).map(String::from));
            match api.code.as_str() {
                "invalid_auth" | "not_authed" | "token_revoked" | "token_expired"
                | "account_inactive" => format!(
                    "{method}: Slack refused {token} ({}): check the token (Slack app → OAuth & Permissions / Basic Information → App-Level Tokens)",
                    api.code
                ),
                "missing_scope" => format!(
                    "{method}: {token} lacks the `{}` scope: add it (Slack app → OAuth & Permissions → Scopes) and reinstall the app",
                    needed.as_deref().unwrap_or("required")
                ),
                "not_allowed_token_type" => format!(
                    "{method}: {token} is the wrong kind of token: SLACK_APP_TOKEN must be an app-level token (xapp-…) with connections:write, SLACK_BOT_TOKEN a bot token (xoxb-…)"
                ),
                "channel_not_found" => format!(
                    "{method}: channel{on} not found: check the id, and invite the app to a private channel (/invite @Seshat)"
                ),
                "not_in_channel" => format!(
                    "{method}: the app is not in channel{on}: invite it (/invite @Seshat)"
                ),
                "thread_not_found" => format!("{method}: thread not found in channel{on}"),
                code => format!("{method}{on}: Slack answered `{code}`"),
            }
        }
        SlackClientError::RateLimitError(r) => format!(
            "{method}{on}: still rate limited by Slack after retries (Retry-After {:?}): run again later or lower SLACK_HISTORY_RATE",
            r.retry_after
        ),
        other => format!("{method}{on}: {other}"),
    };
    ConnectError(msg)
}

// ---------------------------------------------------------------- clients

/// Web API client settings.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Requests per minute for `conversations.history` / `conversations.replies`
    /// (Slack's Tier 3: 50 by default; about 1 for apps that are not in the
    /// Marketplace and are subject to Slack's 2025 limits).
    pub history_per_minute: Option<u32>,
    /// How many times a `ratelimited` answer is retried after its `Retry-After`.
    pub max_retries: usize,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            history_per_minute: None,
            max_retries: 8,
        }
    }
}

impl ApiOptions {
    /// slack-morphism's rate control: its tier table (Tier 3 replaced by
    /// `history_per_minute`) and retries that wait for `Retry-After`.
    pub fn rate_control(&self) -> SlackApiRateControlConfig {
        let mut tiers = SLACK_TIERS_DEFAULT_LIMITS_MAP.clone();
        if let Some(n) = self.history_per_minute.filter(|n| *n > 0) {
            tiers.insert(
                SlackApiMethodRateTier::Tier3,
                SlackApiRateControlLimit::new(n as usize, Duration::from_secs(60)),
            );
        }
        SlackApiRateControlConfig::new()
            .with_tiers_limits(tiers)
            .with_max_retries(self.max_retries)
    }

    /// Seconds between two history requests under this pacing.
    fn history_interval(&self) -> f64 {
        60.0 / f64::from(self.history_per_minute.filter(|n| *n > 0).unwrap_or(50))
    }
}

/// The production client: HTTPS to slack.com with the system's roots.
pub fn https_client(opts: &ApiOptions) -> std::io::Result<Arc<Client<SlackHyperHttpsConnector>>> {
    let connector = SlackClientHyperConnector::new()?.with_rate_control(opts.rate_control());
    Ok(Arc::new(SlackClient::new(connector)))
}

/// A plain-HTTP client against another API root (`http://host:port/api`): a
/// local fake Slack in tests, or a proxy.
pub fn http_client(api_url: &str, opts: &ApiOptions) -> Arc<Client<HttpConnector>> {
    let connector = SlackClientHyperConnector::with_connector(HttpConnector::new())
        .with_slack_api_url(api_url.trim_end_matches('/'))
        .with_rate_control(opts.rate_control());
    Arc::new(SlackClient::new(connector))
}

/// Who the bot token belongs to (`auth.test`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The bot's own user id (never a helper).
    pub user_id: String,
    /// The workspace.
    pub team_id: String,
}

/// A bot-token session: the client, the token (with its team, so the rate
/// controller applies per-workspace tier limits) and the bot's identity.
pub struct SlackApi<H: Connector> {
    client: Arc<Client<H>>,
    token: SlackApiToken,
    /// Who the token belongs to.
    pub identity: Identity,
    opts: ApiOptions,
}

impl<H: Connector> SlackApi<H> {
    /// Checks the bot token with `auth.test` and keeps the bot's identity.
    pub async fn connect(
        client: Arc<Client<H>>,
        bot_token: &str,
        opts: ApiOptions,
    ) -> Result<Self, ConnectError> {
        let mut token = SlackApiToken::new(SlackApiTokenValue(bot_token.to_string()));
        let auth = within(client.open_session(&token).auth_test())
            .await?
            .map_err(|e| explain("auth.test", "SLACK_BOT_TOKEN", None, e))?;
        token = token.with_team_id(SlackTeamId(auth.team_id.0.clone()));
        Ok(SlackApi {
            client,
            token,
            identity: Identity {
                user_id: auth.user_id.0,
                team_id: auth.team_id.0,
            },
            opts,
        })
    }

    /// Every member of a channel (all pages of `conversations.members`).
    pub async fn members(&self, channel: &str) -> Result<Vec<String>, ConnectError> {
        let session = self.client.open_session(&self.token);
        let req = SlackApiConversationsMembersRequest::new()
            .with_channel(SlackChannelId(channel.to_string()))
            .with_limit(200);
        let mut pages = SlackApiScrollableRequest::<SlackClientHyperConnector<H>>::scroller(&req);
        let mut out = Vec::new();
        while pages.has_next() {
            let page = within(pages.next_mut(&session)).await?.map_err(|e| {
                explain("conversations.members", "SLACK_BOT_TOKEN", Some(channel), e)
            })?;
            out.extend(page.members.into_iter().map(|u| u.0));
        }
        Ok(out)
    }

    /// A user's name as Slack shows it (`users.info`, scope `users:read`): the
    /// profile's display name, else the real name, else the username.
    /// `Ok(None)`: Slack knows no such user, or shows it no name.
    pub async fn user_name(&self, user: &str) -> Result<Option<String>, ConnectError> {
        let session = self.client.open_session(&self.token);
        let req = SlackApiUsersInfoRequest::new(SlackUserId(user.to_string()));
        match within(session.users_info(&req)).await? {
            Ok(r) => Ok(name_of(&r.user)),
            Err(SlackClientError::ApiError(e))
                if matches!(e.code.as_str(), "user_not_found" | "user_not_visible") =>
            {
                Ok(None)
            }
            Err(e) => Err(explain("users.info", "SLACK_BOT_TOKEN", None, e)),
        }
    }
}

/// The first non-blank of the profile's display name, the real name and the username.
fn name_of(u: &SlackUser) -> Option<String> {
    let profile = u.profile.as_ref();
    [
        profile.and_then(|p| p.display_name.as_deref()),
        profile.and_then(|p| p.real_name.as_deref()),
        u.real_name.as_deref(),
        u.name.as_deref(),
    ]
    .into_iter()
    .flatten()
    .map(str::trim)
    .find(|n| !n.is_empty())
    .map(String::from)
}

/// Longest wait for one Web API call, `Retry-After` retries included: the
/// client has no timeout of its own, and a hung call must not stall the roster
/// loop or a catch-up forever.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);

async fn within<T>(call: impl std::future::Future<Output = T>) -> Result<T, ConnectError> {
    tokio::time::timeout(CALL_TIMEOUT, call).await.map_err(|_| {
        ConnectError(format!(
            "a Slack Web API call got no answer in {} minutes: check the network",
            CALL_TIMEOUT.as_secs() / 60
        ))
    })
}

// ---------------------------------------------------------------- ingest

/// Applies one Events API payload (an `event_callback` body) exactly as
/// `POST /slack/events` does. Returns whether it may be acknowledged: false
/// only when the journal could not record it (Slack will redeliver).
pub fn ingest_payload(app: &App, payload: Value) -> bool {
    match slack::decode_value(payload) {
        Err(e) => {
            app.metrics.event("invalid_body", "rejected");
            tracing::warn!(error = %e, "refused Socket Mode payload");
            true
        }
        Ok(SlackBody::UrlVerification(_)) => true,
        Ok(SlackBody::Notice(kind)) => {
            app.metrics.event(&kind, "ignored");
            true
        }
        Ok(SlackBody::Rejected { kind, reason }) => {
            app.metrics.event(&kind, "rejected");
            tracing::warn!(%kind, %reason, "rejected malformed event");
            true
        }
        Ok(SlackBody::Event(d)) => match app.ingest(&d) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "journal write failed; not acknowledging");
                false
            }
        },
    }
}

// ---------------------------------------------------------------- Socket Mode

/// Socket Mode settings (slack-morphism's defaults unless changed).
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Simultaneous WebSocket connections (Slack spreads events over them; two
    /// keep the app reachable while one is being refreshed).
    pub connections: u32,
    /// Wait between two attempts to (re)open a connection.
    pub reconnect_after: Duration,
    /// Ping interval; a connection with no pong for 5 intervals is reopened.
    pub ping_interval: Duration,
    /// Reopen a connection that received no frame for this long (sockets have
    /// been seen to die silently while still answering pings). `None`: off.
    pub silence_watchdog: Option<Duration>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            connections: SlackClientSocketModeConfig::DEFAULT_CONNECTIONS_COUNT,
            reconnect_after: Duration::from_secs(
                SlackClientSocketModeConfig::DEFAULT_RECONNECT_TIMEOUT_IN_SECONDS,
            ),
            ping_interval: Duration::from_secs(
                SlackClientSocketModeConfig::DEFAULT_PING_INTERVAL_IN_SECONDS,
            ),
            silence_watchdog: Some(Duration::from_secs(3600)),
        }
    }
}

type Manager = dyn SlackSocketModeClientsManager + Send + Sync;

/// Our side of slack-morphism's connection manager: it receives every raw frame.
struct SocketListener {
    app: Arc<App>,
    manager: Weak<Manager>,
    /// Connections that have sent a frame, with the time of their latest one.
    live: Mutex<HashMap<String, (SlackSocketModeWssClientId, Instant)>>,
}

impl SocketListener {
    fn live(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (SlackSocketModeWssClientId, Instant)>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, n: usize) {
        self.app.metrics.socket_connections.set(n as i64);
        self.app.socket_connected.store(n > 0, Ordering::Relaxed);
    }

    fn seen(&self, id: &SlackSocketModeWssClientId) {
        let mut live = self.live();
        let fresh = live
            .insert(id.to_string(), (id.clone(), Instant::now()))
            .is_none();
        if fresh {
            let n = live.len();
            drop(live);
            self.publish(n);
        }
    }

    fn lost(&self, id: &SlackSocketModeWssClientId) {
        let mut live = self.live();
        if live.remove(&id.to_string()).is_some() {
            let n = live.len();
            drop(live);
            self.publish(n);
        }
    }

    async fn reconnect(&self, id: &SlackSocketModeWssClientId) {
        self.lost(id);
        if let Some(manager) = self.manager.upgrade() {
            self.app.metrics.socket_reconnects.inc();
            manager.restart_client(id).await;
        }
    }
}

#[async_trait]
impl SlackSocketModeClientListener for SocketListener {
    async fn on_message(&self, id: &SlackSocketModeWssClientId, body: String) -> Option<String> {
        let frame: Value = match serde_json::from_str(&body) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "Socket Mode frame is not JSON");
                return None;
            }
        };
        let envelope = frame
            .get("envelope_id")
            .and_then(Value::as_str)
            .map(String::from);
        let ack = |e: Option<String>| e.map(|id| json!({ "envelope_id": id }).to_string());
        match frame.get("type").and_then(Value::as_str) {
            Some("hello") => {
                self.seen(id);
                tracing::info!(connection = %id.to_string(), "Socket Mode connected");
                None
            }
            Some("disconnect") => {
                let reason = frame.get("reason").and_then(Value::as_str).unwrap_or("");
                tracing::info!(connection = %id.to_string(), %reason, "Slack asked to reconnect");
                self.reconnect(id).await;
                None
            }
            Some("events_api") => {
                self.seen(id);
                let payload = frame.get("payload").cloned().unwrap_or(Value::Null);
                if ingest_payload(&self.app, payload) {
                    ack(envelope)
                } else {
                    None
                }
            }
            _ => {
                // interactive / slash_commands: nothing for Seshat, acknowledged so
                // Slack does not retry them.
                self.seen(id);
                ack(envelope)
            }
        }
    }

    async fn on_error(&self, error: Box<dyn std::error::Error + Send + Sync + 'static>) {
        tracing::warn!(%error, "Socket Mode connection error");
    }

    async fn on_disconnect(&self, id: &SlackSocketModeWssClientId) {
        tracing::warn!(connection = %id.to_string(), "Socket Mode connection lost; reconnecting");
        self.reconnect(id).await;
    }
}

/// A running Socket Mode listener. Keep it for as long as Socket Mode should
/// run: it owns slack-morphism's connection manager, without which dropped
/// connections are not reopened.
pub struct SocketMode {
    manager: Arc<Manager>,
    listener: Arc<SocketListener>,
    watchdog: Option<JoinHandle<()>>,
}

impl SocketMode {
    /// Number of connections that have said hello and not dropped since.
    pub fn connections(&self) -> usize {
        self.listener.live().len()
    }

    /// Closes every connection.
    pub async fn shutdown(mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        self.manager.shutdown().await;
        self.listener.live().clear();
        self.listener.publish(0);
    }
}

/// Opens Socket Mode with an app-level token (`xapp-…`, scope `connections:write`).
///
/// The token is checked first with one `apps.connections.open` call, so a bad
/// token is a one-line error instead of an endless reconnect loop; after that,
/// failures to (re)connect are retried by slack-morphism every
/// `reconnect_after`. `app.socket_connected` (and so `/health`'s `slack`) is
/// true while at least one connection has said hello and not dropped.
pub async fn start_socket_mode<H: Connector>(
    app: Arc<App>,
    client: Arc<Client<H>>,
    app_token: &str,
    opts: SocketOptions,
) -> Result<SocketMode, ConnectError> {
    let token = SlackApiToken::new(SlackApiTokenValue(app_token.to_string()));
    let check = client
        .open_session(&token)
        .apps_connections_open(&SlackApiAppsConnectionOpenRequest::new())
        .await;
    match check {
        Ok(_) => {}
        Err(e @ SlackClientError::ApiError(_)) => {
            return Err(explain("apps.connections.open", "SLACK_APP_TOKEN", None, e))
        }
        Err(e) => tracing::warn!(error = %e, "apps.connections.open failed; will keep retrying"),
    }
    let secs = |d: Duration| d.as_secs().max(1);
    let config = SlackClientSocketModeConfig::new()
        .with_max_connections_count(opts.connections.max(1))
        .with_initial_backoff_in_seconds(secs(opts.reconnect_after).min(5))
        .with_reconnect_timeout_in_seconds(secs(opts.reconnect_after))
        .with_ping_interval_in_seconds(secs(opts.ping_interval));
    let env = Arc::new(SlackClientEventsListenerEnvironment::new(client.clone()));
    let manager: Arc<Manager> = client.http_api.connector.new_clients_manager(env);
    let listener = Arc::new(SocketListener {
        app,
        manager: Arc::downgrade(&manager),
        live: Mutex::new(HashMap::new()),
    });
    manager
        .register_new_token(&config, token, listener.clone())
        .await
        .map_err(|e| explain("apps.connections.open", "SLACK_APP_TOKEN", None, e))?;
    manager.start().await;
    let watchdog = opts.silence_watchdog.map(|silence| {
        let listener = Arc::downgrade(&listener);
        tokio::spawn(async move {
            let every = (silence / 4).max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(every).await;
                let Some(l) = listener.upgrade() else { break };
                // One connection at a time, so the others keep receiving.
                let stale = l
                    .live()
                    .values()
                    .filter(|(_, at)| at.elapsed() > silence)
                    .map(|(id, _)| id.clone())
                    .next();
                if let Some(id) = stale {
                    tracing::warn!(connection = %id.to_string(), ?silence, "no Socket Mode frame received; reopening the connection");
                    l.reconnect(&id).await;
                }
            }
        })
    });
    Ok(SocketMode {
        manager,
        listener,
        watchdog,
    })
}

// ---------------------------------------------------------------- roster

/// What one roster sync changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RosterChange {
    /// Members of the team channel (the bot excluded).
    pub members: usize,
    /// Helpers added.
    pub joined: Vec<String>,
    /// Helpers removed.
    pub left: Vec<String>,
}

/// The latest time any ticket changed: a delivery time that moves no clock.
fn newest_activity(app: &App) -> Option<Micros> {
    let engine = app.engine();
    engine
        .all_tickets()
        .map(|t| {
            [Some(t.last_msg_at), t.closed_at, t.reopened_at]
                .into_iter()
                .flatten()
                .fold(t.created_at, Micros::max)
        })
        .max()
}

/// Reads the team channel's members and applies the differences with the
/// current helpers as helper joins and leaves (deliveries without an
/// `event_id`, through [`App::ingest`], so they are journaled). The bot's own
/// user is never a helper; helpers named in the configuration (`HELPERS`) are
/// kept even when they are not in the channel.
pub async fn sync_roster<H: Connector>(
    app: &App,
    api: &SlackApi<H>,
    team_channel: &str,
) -> Result<RosterChange, ConnectError> {
    let bot = api.identity.user_id.clone();
    let members: HashSet<String> = api
        .members(team_channel)
        .await?
        .into_iter()
        .filter(|m| *m != bot)
        .collect();
    let (current, pinned): (HashSet<String>, HashSet<String>) = {
        let engine = app.engine();
        (
            engine.helpers().into_iter().collect(),
            engine.config().helpers.iter().cloned().collect(),
        )
    };
    // Delivery times that move no clock: stale closes must not run ahead of a
    // backfill that follows (R10).
    let time = newest_activity(app).unwrap_or_default();
    let ingest = |event: Event, bot_user: Option<String>| {
        app.ingest(&Delivery {
            event_id: None,
            time,
            bot_user,
            event,
        })
        .map_err(ConnectError::journal)
    };
    ingest(
        Event::Other {
            kind: "auth_test".into(),
        },
        Some(bot.clone()),
    )?;
    let mut joined: Vec<String> = members.difference(&current).cloned().collect();
    let mut left: Vec<String> = current
        .iter()
        .filter(|h| !members.contains(*h) && !pinned.contains(*h))
        .cloned()
        .collect();
    joined.sort();
    left.sort();
    for (users, join) in [(&joined, true), (&left, false)] {
        for user in users {
            ingest(
                Event::Member {
                    joined: join,
                    user: user.clone(),
                    channel: team_channel.to_string(),
                },
                None,
            )?;
        }
    }
    Ok(RosterChange {
        members: members.len(),
        joined,
        left,
    })
}

/// Syncs the roster now and then every `every`, logging (not failing on) errors.
pub fn spawn_roster<H: Connector>(
    app: Arc<App>,
    api: Arc<SlackApi<H>>,
    team_channel: String,
    every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut names = HelperNames::new(NAMES_REFRESH);
        loop {
            log_roster(sync_roster(&app, &api, &team_channel).await);
            names.update(&app, &api).await;
            tokio::time::sleep(every).await;
        }
    })
}

fn log_roster(r: Result<RosterChange, ConnectError>) {
    match r {
        Ok(c) if c.joined.is_empty() && c.left.is_empty() => {
            tracing::debug!(members = c.members, "helper roster unchanged")
        }
        Ok(c) => tracing::info!(
            members = c.members,
            joined = ?c.joined,
            left = ?c.left,
            "helper roster synced from the team channel"
        ),
        Err(e) => tracing::error!("helper roster: {e}"),
    }
}

// ---------------------------------------------------------------- names

/// How long a helper's resolved name is kept before Slack is asked again.
pub const NAMES_REFRESH: Duration = Duration::from_secs(12 * 60 * 60);

/// The helpers' display names for the dashboard, resolved with `users.info`
/// (scope `users:read`) and cached in the [`App`] ([`App::set_name`], served by
/// `/api/names`). Each helper is asked about at most once per `refresh`; a new
/// helper on the next [`HelperNames::update`].
#[derive(Debug)]
pub struct HelperNames {
    refresh: Duration,
    /// When each user was last asked about (answered, or unknown to Slack).
    asked: HashMap<String, Instant>,
    /// The failure last logged, so that a lasting one (a missing scope) is
    /// logged once rather than after every roster sync.
    last_error: Option<String>,
}

impl HelperNames {
    /// No name asked about yet; names are asked again after `refresh`.
    pub fn new(refresh: Duration) -> Self {
        HelperNames {
            refresh,
            asked: HashMap::new(),
            last_error: None,
        }
    }

    /// Asks Slack for the name of every current helper not asked about within
    /// `refresh` and records the answers in the app; returns how many names
    /// were recorded. Stops at the first failure that is not about one user
    /// (missing scope, refused token, network): the helpers left are asked
    /// about on the next call.
    pub async fn resolve<H: Connector>(
        &mut self,
        app: &App,
        api: &SlackApi<H>,
    ) -> Result<usize, ConnectError> {
        let helpers = app.engine().helpers();
        let mut recorded = 0;
        for user in helpers {
            if self
                .asked
                .get(&user)
                .is_some_and(|t| t.elapsed() < self.refresh)
            {
                continue;
            }
            let name = api.user_name(&user).await?;
            self.asked.insert(user.clone(), Instant::now());
            if let Some(name) = name {
                app.set_name(&user, &name);
                recorded += 1;
            }
        }
        Ok(recorded)
    }

    /// [`HelperNames::resolve`], a failure logged on one line (the same
    /// failure again only at debug level); the dashboard then shows Slack ids.
    pub async fn update<H: Connector>(&mut self, app: &App, api: &SlackApi<H>) {
        match self.resolve(app, api).await {
            Ok(n) => {
                self.last_error = None;
                if n > 0 {
                    tracing::info!(names = n, "helper display names resolved");
                }
            }
            Err(e) => {
                let e = e.to_string();
                if self.last_error.as_deref() == Some(e.as_str()) {
                    tracing::debug!("helper names: {e}");
                } else {
                    tracing::warn!("helper names (the dashboard shows Slack ids): {e}");
                }
                self.last_error = Some(e);
            }
        }
    }
}

// ---------------------------------------------------------------- backfill

/// Backfill settings.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// Read top-level messages from this instant on (inclusive).
    pub since: Micros,
    /// Leave messages at or after this instant to live delivery (start-up
    /// catch-up: the instant live ingestion started). `None`: up to now.
    pub until: Option<Micros>,
    /// Messages per page asked of Slack (Slack may return fewer).
    pub page_size: u16,
    /// Also look for replies since `since` in the threads of older tickets: the
    /// history is then read from the oldest ticket that is not closed, and the
    /// threads of known tickets whose `latest_reply` is at or after `since` are
    /// read (top-level messages older than `since` are never applied).
    pub open_tickets: bool,
    /// Print progress on stderr.
    pub progress: bool,
}

impl BackfillOptions {
    /// Everything since `since`, with progress on stderr.
    pub fn since(since: Micros) -> Self {
        BackfillOptions {
            since,
            until: None,
            page_size: 200,
            open_tickets: true,
            progress: true,
        }
    }
}

/// What a backfill did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillReport {
    /// Messages returned by Slack (history and replies, parents counted once per read).
    pub messages_read: u64,
    /// Threads read with `conversations.replies`.
    pub threads: u64,
    /// Web API pages requested.
    pub requests: u64,
    /// Deliveries that changed the state.
    pub applied: u64,
    /// Deliveries the engine ignored (noise, or already reflected).
    pub ignored: u64,
    /// Replies not applied because their thread already has a later event.
    pub skipped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TopLevel,
    Reply,
    Edit,
    /// A ✅ seen on the top-level message; `reopen_last`: the thread's latest
    /// message is a reopen macro (the reaction is older than it).
    Resolution {
        reopen_last: bool,
    },
}

struct Item {
    at: Micros,
    seq: u64,
    channel: String,
    thread: String,
    kind: Kind,
    delivery: Delivery,
}

/// Per thread: the time of the latest event already reflected in the state.
#[derive(Debug, Clone, Copy, Default)]
struct Mark {
    latest: Micros,
    reopened: Option<Micros>,
}

fn slack_ts(t: Micros) -> SlackTs {
    SlackTs(format!(
        "{}.{:06}",
        t.0.div_euclid(1_000_000),
        t.0.rem_euclid(1_000_000)
    ))
}

fn subtype_of(m: &SlackHistoryMessage) -> Option<String> {
    let v = serde_json::to_value(m.subtype.as_ref()?).ok()?;
    v.as_str().map(String::from)
}

struct Progress {
    enabled: bool,
    started: Instant,
    threads_started: Option<Instant>,
    last: Instant,
    interval: f64,
}

impl Progress {
    fn new(enabled: bool, interval: f64) -> Self {
        let now = Instant::now();
        Progress {
            enabled,
            started: now,
            threads_started: None,
            last: now,
            interval,
        }
    }

    fn show(&mut self, r: &BackfillReport, threads_total: u64, force: bool) {
        if !self.enabled || (!force && self.last.elapsed() < Duration::from_secs(2)) {
            return;
        }
        self.last = Instant::now();
        let remaining = threads_total.saturating_sub(r.threads) as f64;
        // The pacing allows a burst of one minute's worth of requests, then one
        // every `interval`: never promise faster than that.
        let burst = (60.0 / self.interval - r.requests as f64).max(0.0);
        let paced = (remaining - burst).max(0.0) * self.interval;
        let eta = match self.threads_started {
            Some(t0) if r.threads > 0 => {
                let per = t0.elapsed().as_secs_f64() / r.threads as f64;
                Some((remaining * per).max(paced))
            }
            Some(_) => Some(paced),
            None => None,
        };
        let eta = eta.map_or("ETA unknown until the history is read".to_string(), |s| {
            format!("ETA {}", human(s))
        });
        eprintln!(
            "backfill: {} messages read · {}/{} threads · {} requests · {} elapsed · {eta}",
            r.messages_read,
            r.threads,
            threads_total,
            r.requests,
            human(self.started.elapsed().as_secs_f64()),
        );
    }
}

fn human(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Reads the help channels' history since `since` and applies it; see [`backfill_with`].
pub async fn backfill<H: Connector>(
    app: &App,
    api: &SlackApi<H>,
    channels: &[String],
    since: Micros,
) -> Result<BackfillReport, ConnectError> {
    backfill_with(app, api, channels, &BackfillOptions::since(since)).await
}

/// Reads `conversations.history` of each channel (top-level messages since
/// `opts.since`) and `conversations.replies` of every thread with replies and,
/// with `opts.open_tickets`, of every ticket not closed; turns the messages into
/// the deliveries the Events API would have sent (`message`, `message_changed`
/// for an edited or tombstoned top-level message, and one `reaction_added` per
/// user for the resolution reaction shown on a top-level message), sorts them by
/// time and applies them through [`App::ingest`] (event id `None`).
///
/// Nothing is applied until everything is read, so that the stale clock (R10)
/// moves in time order; an error (bad token, missing scope, unknown channel)
/// leaves the state untouched.
///
/// Idempotence — a second run over the same period changes nothing:
/// - a top-level message whose `ts` is already a ticket (or a deleted one) is
///   ignored by the engine; an edit sets the text the ticket already has;
/// - a reply is applied only if it is later than the latest event already
///   reflected in its thread (max of `last_msg_at`, `closed_at`, `reopened_at`,
///   `created_at`), so an old helper reply cannot take the assignment back and an
///   old `?resolve`/`?reopen` cannot be replayed over a later state;
/// - a ✅ from the history resolves only a ticket that is not closed and was not
///   reopened at or after the reaction's estimated time (history gives no time
///   for reactions: the thread's latest message is used).
///
/// What is *not* idempotent or not recovered: a reply that changed nothing (a
/// `?resolve` by a non-helper) may change something on a later run if the
/// helper roster changed in between; deletions of messages without replies and
/// reaction removals leave no trace in the history; the watermarks are taken
/// when the backfill starts, so a live event applied while it runs (at or
/// after `until`) comes before older messages of the same thread, and if both
/// are helper replies the older one ends up holding the assignment. With
/// `stale_after_days`, a stale close already applied
/// (because the server answered a read at a later `now`) is not undone by a
/// reply the backfill finds before the stale instant.
pub async fn backfill_with<H: Connector>(
    app: &App,
    api: &SlackApi<H>,
    channels: &[String],
    opts: &BackfillOptions,
) -> Result<BackfillReport, ConnectError> {
    let mut report = BackfillReport::default();
    let mut progress = Progress::new(opts.progress, api.opts.history_interval());
    let (mut marks, open, reaction) = {
        let engine = app.engine();
        let mut marks: HashMap<(String, String), Mark> = HashMap::new();
        let mut open: HashMap<String, Micros> = HashMap::new();
        for t in engine.all_tickets() {
            let channel = engine.channel_name(t.channel).to_string();
            let latest = [Some(t.last_msg_at), t.closed_at, t.reopened_at]
                .into_iter()
                .flatten()
                .fold(t.created_at, Micros::max);
            marks.insert(
                (channel.clone(), t.message_ts.clone()),
                Mark {
                    latest,
                    reopened: t.reopened_at,
                },
            );
            if t.status != Status::Closed {
                let oldest = open.entry(channel).or_insert(t.created_at);
                *oldest = (*oldest).min(t.created_at);
            }
        }
        (marks, open, engine.config().resolution_reaction.clone())
    };
    let until = opts.until;
    let before_until = |at: Micros| until.is_none_or(|u| at < u);
    let session = api.client.open_session(&api.token);
    let mut items: Vec<Item> = Vec::new();
    let mut seq = 0u64;
    let mut push = |items: &mut Vec<Item>, channel: &str, thread: &str, kind: Kind, at, event| {
        seq += 1;
        items.push(Item {
            at,
            seq,
            channel: channel.to_string(),
            thread: thread.to_string(),
            kind,
            delivery: Delivery {
                event_id: None,
                time: at,
                bot_user: None,
                event,
            },
        });
    };

    // Phase 1: the history of every channel, from `since` or, to see replies
    // that came since then in older tickets' threads, from the oldest ticket
    // that is not closed.
    let mut threads: Vec<(String, String)> = Vec::new();
    let mut single: Vec<(String, String, SlackHistoryMessage, Micros)> = Vec::new();
    for channel in channels {
        let from = match open.get(channel) {
            Some(oldest) if opts.open_tickets => opts.since.min(*oldest),
            _ => opts.since,
        };
        let req = SlackApiConversationsHistoryRequest::new()
            .with_channel(SlackChannelId(channel.clone()))
            .with_oldest(slack_ts(from))
            .with_inclusive(true)
            .with_limit(opts.page_size)
            .opt_latest(until.map(slack_ts));
        let mut pages = SlackApiScrollableRequest::<SlackClientHyperConnector<H>>::scroller(&req);
        while pages.has_next() {
            let page = within(pages.next_mut(&session)).await?.map_err(|e| {
                explain("conversations.history", "SLACK_BOT_TOKEN", Some(channel), e)
            })?;
            report.requests += 1;
            for m in &page.messages {
                report.messages_read += 1;
                let ts = m.origin.ts.0.clone();
                let Ok(at) = Micros::from_slack_ts(&ts) else {
                    continue;
                };
                if m.origin.thread_ts.as_ref().is_some_and(|t| t.0 != ts) {
                    // A thread_broadcast: it comes again with its thread's replies.
                    continue;
                }
                let recent = at >= opts.since;
                if !recent && !marks.contains_key(&(channel.clone(), ts.clone())) {
                    // Older than `since` and not a ticket: not asked for.
                    continue;
                }
                let latest_reply = m
                    .parent
                    .latest_reply
                    .as_ref()
                    .and_then(|t| Micros::from_slack_ts(&t.0).ok());
                let has_replies = m.parent.reply_count.unwrap_or(0) > 0 || latest_reply.is_some();
                let fresh = recent || latest_reply.is_none_or(|r| r >= opts.since);
                if has_replies && fresh {
                    threads.push((channel.clone(), ts));
                } else {
                    let est = latest_reply.map_or(at, |r| r.max(at));
                    single.push((channel.clone(), ts, m.clone(), est));
                }
            }
            progress.show(&report, 0, false);
        }
    }

    // Top-level messages whose thread is not read: the message itself when it
    // is in the period, and the resolution reaction it shows.
    for (channel, ts, m, est) in &single {
        let Ok(at) = Micros::from_slack_ts(ts) else {
            continue;
        };
        if at >= opts.since && before_until(at) {
            add_message(&mut items, &mut push, channel, ts, m);
        }
        if before_until(*est) {
            add_resolution(
                &mut push, &mut items, channel, ts, m, &reaction, *est, false,
            );
        }
    }

    // Phase 2: every thread.
    let total = threads.len() as u64;
    progress.threads_started = Some(Instant::now());
    progress.show(&report, total, true);
    for (channel, parent_ts) in &threads {
        let req = SlackApiConversationsRepliesRequest::new(
            SlackChannelId(channel.clone()),
            SlackTs(parent_ts.clone()),
        )
        .with_limit(opts.page_size);
        let mut pages = SlackApiScrollableRequest::<SlackClientHyperConnector<H>>::scroller(&req);
        let mut parent: Option<SlackHistoryMessage> = None;
        let mut latest: Option<(Micros, bool)> = None;
        let mut seen: HashSet<String> = HashSet::new();
        while pages.has_next() {
            let page = within(pages.next_mut(&session)).await?.map_err(|e| {
                explain("conversations.replies", "SLACK_BOT_TOKEN", Some(channel), e)
            })?;
            report.requests += 1;
            for m in &page.messages {
                report.messages_read += 1;
                let ts = m.origin.ts.0.clone();
                let Ok(at) = Micros::from_slack_ts(&ts) else {
                    continue;
                };
                if !before_until(at) || !seen.insert(ts.clone()) {
                    continue;
                }
                let reopen =
                    m.sender.bot_id.is_none()
                        && m.content.text.as_deref().and_then(macro_word).is_some_and(
                            |(name, _)| matches!(name.as_str(), "reopen" | "unresolve" | "open"),
                        );
                if latest.is_none_or(|(t, _)| at > t) {
                    latest = Some((at, reopen));
                }
                if ts == *parent_ts {
                    parent = Some(m.clone());
                }
                add_message(&mut items, &mut push, channel, parent_ts, m);
            }
            progress.show(&report, total, false);
        }
        report.threads += 1;
        if let (Some(p), Some((at, reopen_last))) = (parent, latest) {
            add_resolution(
                &mut push,
                &mut items,
                channel,
                parent_ts,
                &p,
                &reaction,
                at,
                reopen_last,
            );
        }
        progress.show(&report, total, false);
    }

    // Phase 3: apply in time order.
    items.sort_by_key(|i| (i.at, i.seq));
    for item in items {
        let key = (item.channel, item.thread);
        let mark = marks.get(&key).copied();
        let skip = match item.kind {
            Kind::TopLevel | Kind::Edit => false,
            Kind::Reply => mark.is_some_and(|m| item.at <= m.latest),
            Kind::Resolution { reopen_last } => {
                reopen_last || mark.is_some_and(|m| m.reopened.is_some_and(|r| r >= item.at))
            }
        };
        if skip {
            report.skipped += 1;
            continue;
        }
        match app.ingest(&item.delivery).map_err(ConnectError::journal)? {
            Outcome::Applied => {
                report.applied += 1;
                if item.kind != Kind::Edit {
                    let m = marks.entry(key).or_default();
                    m.latest = m.latest.max(item.at);
                    if let Event::Message(msg) = &item.delivery.event {
                        if macro_word(&msg.text).is_some_and(|(n, _)| {
                            matches!(n.as_str(), "reopen" | "unresolve" | "open")
                        }) {
                            m.reopened = Some(item.at);
                        }
                    }
                }
            }
            _ => report.ignored += 1,
        }
    }
    if opts.progress {
        progress.show(&report, total, true);
        eprintln!(
            "backfill: done: {} messages read, {} threads, {} applied, {} ignored, {} skipped as already applied",
            report.messages_read, report.threads, report.applied, report.ignored, report.skipped
        );
    }
    Ok(report)
}

type Push<'a> = dyn FnMut(&mut Vec<Item>, &str, &str, Kind, Micros, Event) + 'a;

/// The deliveries for one message read from the history or a thread.
fn add_message(
    items: &mut Vec<Item>,
    push: &mut Push<'_>,
    channel: &str,
    thread: &str,
    m: &SlackHistoryMessage,
) {
    let ts = m.origin.ts.0.clone();
    let Ok(at) = Micros::from_slack_ts(&ts) else {
        return;
    };
    let subtype = subtype_of(m);
    let top = ts == thread;
    if subtype.as_deref() == Some("tombstone") {
        push(
            items,
            channel,
            thread,
            Kind::Edit,
            at,
            Event::MessageChanged {
                channel: channel.to_string(),
                ts,
                text: String::new(),
                user: None,
                tombstone: true,
            },
        );
        return;
    }
    let text = m.content.text.clone().unwrap_or_default();
    let user = m.sender.user.as_ref().map(|u| u.0.clone());
    push(
        items,
        channel,
        thread,
        if top { Kind::TopLevel } else { Kind::Reply },
        at,
        Event::Message(Message {
            channel: channel.to_string(),
            ts: ts.clone(),
            at,
            thread_ts: (!top).then(|| thread.to_string()),
            user: user.clone(),
            bot: m.sender.bot_id.is_some() || subtype.as_deref() == Some("bot_message"),
            subtype,
            text: text.clone(),
        }),
    );
    if top {
        if let Some(edited) = &m.edited {
            let at = Micros::from_slack_ts(&edited.ts.0).unwrap_or(at).max(at);
            push(
                items,
                channel,
                thread,
                Kind::Edit,
                at,
                Event::MessageChanged {
                    channel: channel.to_string(),
                    ts,
                    text,
                    user: Some(edited.user.0.clone()),
                    tombstone: false,
                },
            );
        }
    }
}

/// One `reaction_added` per user of the resolution reaction on a top-level message.
#[allow(clippy::too_many_arguments)]
fn add_resolution(
    push: &mut Push<'_>,
    items: &mut Vec<Item>,
    channel: &str,
    thread: &str,
    parent: &SlackHistoryMessage,
    reaction: &str,
    at: Micros,
    reopen_last: bool,
) {
    let Some(reactions) = &parent.content.reactions else {
        return;
    };
    for r in reactions.iter().filter(|r| r.name.0 == reaction) {
        for user in &r.users {
            push(
                items,
                channel,
                thread,
                Kind::Resolution { reopen_last },
                at,
                Event::Reaction {
                    added: true,
                    user: user.0.clone(),
                    reaction: reaction.to_string(),
                    channel: channel.to_string(),
                    item_ts: thread.to_string(),
                    at,
                },
            );
        }
    }
}

// ---------------------------------------------------------------- start-up

/// Where an automatic catch-up starts: a little before the newest event the
/// state reflects (`None` for an empty state: use `seshat backfill --since`).
pub fn catch_up_since(app: &App) -> Option<Micros> {
    newest_activity(app).map(|t| t.plus(-15 * 60 * 1_000_000))
}

/// `serve` start-up with a bot token: the roster once (so macros see the
/// helpers) and the helpers' display names ([`HelperNames`]), then a catch-up
/// backfill from the newest applied event up to `live_since` (what came later
/// is delivered live), then the roster and names every `roster_every`. Errors
/// are logged on one line; the server keeps serving.
pub fn spawn_start_up<H: Connector>(
    app: Arc<App>,
    api: Arc<SlackApi<H>>,
    team_channel: Option<String>,
    roster_every: Duration,
    catch_up: bool,
    live_since: Micros,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut names = HelperNames::new(NAMES_REFRESH);
        if let Some(team) = &team_channel {
            log_roster(sync_roster(&app, &api, team).await);
        }
        names.update(&app, &api).await;
        if catch_up {
            match catch_up_since(&app) {
                None => tracing::info!(
                    "no history in the state yet: run `seshat backfill --since <ISO 8601>` to import past tickets"
                ),
                Some(since) => {
                    let channels = app.engine().config().help_channels.clone();
                    let opts = BackfillOptions {
                        until: Some(live_since),
                        ..BackfillOptions::since(since)
                    };
                    tracing::info!(since = %since.to_iso(), "catching up on Slack history");
                    match backfill_with(&app, &api, &channels, &opts).await {
                        Ok(r) => tracing::info!(
                            applied = r.applied,
                            threads = r.threads,
                            "catch-up done"
                        ),
                        Err(e) => tracing::error!("catch-up: {e}"),
                    }
                }
            }
        }
        if let Some(team) = team_channel {
            loop {
                tokio::time::sleep(roster_every).await;
                log_roster(sync_roster(&app, &api, &team).await);
                names.update(&app, &api).await;
            }
        }
    })
}
