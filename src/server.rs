//! The HTTP shell: hyper 1 routes over the engine, the signed Slack endpoint,
//! and the Server-Sent Events stream.

use crate::engine::series::Width;
use crate::engine::{Engine, Outcome, TicketQuery};
use crate::metrics::Metrics;
use crate::model::{Delivery, Status};
use crate::report::LegacyStats;
use crate::slack::{self, Body as SlackBody};
use crate::time::{Micros, DAY};
use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};

/// Largest accepted Slack body.
pub const MAX_BODY: usize = 1 << 20;

/// The response body type of every route.
pub type Body = BoxBody<Bytes, Infallible>;

/// Where `now` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The wall clock.
    Wall,
    /// A frozen instant (`--now`), for replays and tests.
    Fixed(Micros),
}

impl Clock {
    /// The current instant on this clock.
    pub fn now(self) -> Micros {
        match self {
            Clock::Wall => Micros::now(),
            Clock::Fixed(t) => t,
        }
    }
}

/// Server options that are not engine configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Slack signing secret for `POST /slack/events`.
    pub signing_secret: Option<String>,
    /// Serve every `description` as an empty string.
    pub hide_descriptions: bool,
    /// Shortest interval between two pushes on `/api/stream`.
    pub stream_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            signing_secret: None,
            hide_descriptions: false,
            stream_interval: Duration::from_millis(250),
        }
    }
}

/// Hook run after every applied delivery, before it is acknowledged (the journal).
pub type BeforeApply = Box<dyn Fn(&Delivery) -> std::io::Result<()> + Send + Sync>;

/// Shared state of the running service.
pub struct App {
    engine: Mutex<Engine>,
    /// The clock answers are computed at.
    pub clock: Clock,
    /// Server options.
    pub settings: Settings,
    /// Exported metrics.
    pub metrics: Metrics,
    /// Whether the last snapshot write succeeded.
    pub snapshot_ok: AtomicBool,
    /// Whether a Socket Mode connection is up.
    pub socket_connected: AtomicBool,
    journal: Option<BeforeApply>,
    /// Serializes ingestion so the journal's order is the apply order, without
    /// holding the engine (and so readers) while the journal syncs.
    ingest_order: Mutex<()>,
    version: watch::Sender<u64>,
    /// `ticket` stream events: (scope of the ticket's channel, SSE chunk).
    ticket_events: broadcast::Sender<(usize, Bytes)>,
    cache: Mutex<Option<(u64, Micros, usize, Bytes)>>,
    /// Display names resolved from Slack (`users.info`), by Slack user id.
    names: DashMap<String, String>,
}

impl App {
    /// Wraps an engine.
    pub fn new(engine: Engine, clock: Clock, settings: Settings) -> Self {
        let (version, _) = watch::channel(engine.version());
        let (ticket_events, _) = broadcast::channel(1024);
        App {
            engine: Mutex::new(engine),
            clock,
            settings,
            metrics: Metrics::default(),
            snapshot_ok: AtomicBool::new(true),
            socket_connected: AtomicBool::new(false),
            journal: None,
            ingest_order: Mutex::new(()),
            version,
            ticket_events,
            cache: Mutex::new(None),
            names: DashMap::new(),
        }
    }

    /// Records the display name of a Slack user (shown by `/api/names`).
    pub fn set_name(&self, slack_id: &str, name: &str) {
        self.names.insert(slack_id.to_string(), name.to_string());
    }

    /// Every resolved display name, by Slack user id (`/api/names`).
    pub fn names(&self) -> BTreeMap<String, String> {
        self.names
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// Installs the hook that makes a delivery durable before it is applied.
    pub fn with_journal(mut self, hook: BeforeApply) -> Self {
        self.journal = Some(hook);
        self
    }

    /// Locks the engine (a poisoned lock still holds consistent state: every
    /// mutation completes before it can panic-free return).
    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds off [`App::ingest`] until the guard is dropped. A snapshot must
    /// rotate the journal and copy the engine under it: an ingest that has
    /// journaled a delivery but not yet applied it would otherwise leave that
    /// delivery in a generation the snapshot claims to contain, and a restart
    /// would lose it.
    pub fn pause_ingest(&self) -> MutexGuard<'_, ()> {
        self.ingest_order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The one ingest path (HTTP, Socket Mode, demo, replay): journal, apply, count, notify.
    pub fn ingest(&self, d: &Delivery) -> std::io::Result<Outcome> {
        let kind = d.event.kind().to_string();
        self.metrics.event(&kind, "received");
        let _order = self.ingest_order.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = &d.event_id {
            if self.engine().has_seen(id) {
                self.metrics.event(&kind, "duplicate");
                return Ok(Outcome::Duplicate);
            }
        }
        if let Some(journal) = &self.journal {
            journal(d)?;
        }
        let mut engine = self.engine();
        let outcome = engine.apply(d);
        let version = engine.version();
        self.publish_tickets(&mut engine, version);
        drop(engine);
        self.metrics.event(
            &kind,
            match outcome {
                Outcome::Applied => "applied",
                Outcome::Duplicate => "duplicate",
                Outcome::Ignored => "ignored",
            },
        );
        if outcome == Outcome::Applied {
            self.version.send_replace(version);
        }
        Ok(outcome)
    }

    /// Serialized `/api/stats_v2` for a scope at `now`, cached per state version and instant.
    pub fn stats_v2_json(&self, scope: usize, now: Micros) -> Bytes {
        let mut engine = self.engine();
        let version = engine.version();
        if let Some((v, t, s, b)) = &*self.cache.lock().unwrap_or_else(|p| p.into_inner()) {
            if *v == version && *t == now && *s == scope {
                return b.clone();
            }
        }
        let stats = engine.stats_v2(now, scope);
        // Advancing may apply stale closes, which bump the version.
        let version = engine.version();
        self.publish_tickets(&mut engine, version);
        drop(engine);
        let bytes = Bytes::from(serde_json::to_vec(&stats).unwrap_or_default());
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((version, now, scope, bytes.clone()));
        self.version.send_if_modified(|v| {
            let changed = *v != version;
            *v = version;
            changed
        });
        bytes
    }

    /// Sends a `ticket` stream event for each changed ticket, if anyone listens.
    fn publish_tickets(&self, engine: &mut Engine, version: u64) {
        let changed = engine.take_changed();
        if self.ticket_events.receiver_count() == 0 {
            return;
        }
        for id in changed {
            let (scope, json) = match engine.ticket(id.0, 0) {
                Some(mut t) => {
                    if self.settings.hide_descriptions {
                        t.description.clear();
                    }
                    let scope = engine.scope(Some(&t.channel)).unwrap_or(0);
                    (scope, serde_json::to_vec(&t).unwrap_or_default())
                }
                None => (
                    0,
                    json!({"id": id.0, "deleted": true})
                        .to_string()
                        .into_bytes(),
                ),
            };
            let mut chunk = format!("event: ticket\nid: {version}\ndata: ").into_bytes();
            chunk.extend_from_slice(&json);
            chunk.extend_from_slice(b"\n\n");
            let _ = self.ticket_events.send((scope, chunk.into()));
        }
    }

    fn health(&self) -> (bool, bool) {
        let slack =
            self.settings.signing_secret.is_some() || self.socket_connected.load(Ordering::Relaxed);
        (slack, self.snapshot_ok.load(Ordering::Relaxed))
    }
}

// ---------------------------------------------------------------- responses

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn ok_json<T: Serialize>(v: &T) -> Response<Body> {
    json_response(StatusCode::OK, serde_json::to_vec(v).unwrap_or_default())
}

/// A route's refusal: a status and the spec's `{"error": …}` body (maybe with a `tip`).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
    allow: Option<&'static str>,
}

impl ApiError {
    fn into_response(self) -> Response<Body> {
        let mut r = json_response(self.status, self.body.to_string());
        if let Some(allow) = self.allow {
            r.headers_mut()
                .insert("allow", HeaderValue::from_static(allow));
        }
        r
    }
}

/// A client error with the spec's `{"error": …}` body.
fn error(status: StatusCode, message: &str) -> ApiError {
    ApiError {
        status,
        body: json!({ "error": message }),
        allow: None,
    }
}

/// A 200 JSON body with an `ETag`, or 304 when the client has it already.
fn cached_json(req_etag: Option<&HeaderValue>, body: Bytes) -> Response<Body> {
    let tag = format!("\"{:016x}\"", fnv1a(&body));
    let matches = req_etag.and_then(|h| h.to_str().ok()).is_some_and(|h| {
        h.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == tag)
    });
    let mut r = if matches {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        json_response(StatusCode::OK, body)
    };
    if let Ok(v) = HeaderValue::from_str(&tag) {
        r.headers_mut().insert(ETAG, v);
    }
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=1"));
    r
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------- queries

/// A parsed query string: the first occurrence of a name wins, empty means absent.
struct Query(Vec<(String, String)>);

impl Query {
    /// Percent-decodes, but keeps `+` literal: none of our values contains a space,
    /// while dates (`+01:00`) and ids (`+5`) legitimately contain `+`.
    fn parse(q: Option<&str>) -> Self {
        let q = q.unwrap_or("").replace('+', "%2B");
        Query(
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The first-named alias if present, else the second.
    fn either(&self, first: &str, second: &str) -> Option<&str> {
        self.get(first).or_else(|| self.get(second))
    }
}

fn iso_param(v: Option<&str>) -> Result<Option<Micros>, ApiError> {
    v.map(|s| {
        Micros::parse_iso(s)
            // `+` is kept literal in queries (see `Query::parse`), so a form-encoded
            // space between date and time arrives as `+`: read it as the separator.
            .or_else(|e| match s.get(10..11) {
                Some("+") => {
                    Micros::parse_iso(&format!("{}T{}", &s[..10], &s[11..])).map_err(|_| e)
                }
                _ => Err(e),
            })
            .map_err(|e| error(StatusCode::BAD_REQUEST, &e.to_string()))
    })
    .transpose()
}

// ---------------------------------------------------------------- routing

type Handled = Result<Response<Body>, ApiError>;

/// Handles one request (public so tests and benches can drive it without a socket).
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let (route, resp) = route(&app, req).await;
    let resp = resp.unwrap_or_else(ApiError::into_response);
    app.metrics.request(
        route,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

async fn route(app: &Arc<App>, req: Request<Incoming>) -> (&'static str, Handled) {
    let path = req.uri().path().to_string();
    let routes: &[(&'static str, Method)] = &[
        ("/", Method::GET),
        ("/health", Method::GET),
        ("/metrics", Method::GET),
        ("/api/stats_v2", Method::GET),
        ("/api/stats", Method::GET),
        ("/api/stats/range", Method::GET),
        ("/api/stats/timeseries", Method::GET),
        ("/api/tickets", Method::GET),
        ("/api/ticket", Method::GET),
        ("/api/user", Method::GET),
        ("/api/stream", Method::GET),
        ("/api/names", Method::GET),
        ("/slack/events", Method::POST),
    ];
    let Some((name, method)) = routes.iter().find(|(p, _)| *p == path) else {
        return ("not_found", Err(error(StatusCode::NOT_FOUND, "not_found")));
    };
    let get_ok = *method == Method::GET && req.method() == Method::HEAD;
    if req.method() != method && !get_ok {
        let mut e = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        e.allow = Some(method.as_str());
        return (name, Err(e));
    }
    let q = Query::parse(req.uri().query());
    let result = match *name {
        "/" => Ok(dashboard()),
        "/health" => {
            let (slack, snapshot) = app.health();
            Ok(ok_json(
                &json!({"healthy": slack && snapshot, "slack": slack, "snapshot": snapshot}),
            ))
        }
        "/metrics" => Ok(metrics(app)),
        "/api/names" => Ok(ok_json(&app.names())),
        "/slack/events" => slack_events(app, req).await,
        _ => read_route(app, name, &q, req.headers()),
    };
    (name, result)
}

fn scope_of(app: &App, q: &Query) -> Result<usize, ApiError> {
    let channel = q.get("channel");
    app.engine().scope(channel).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("Unknown channel: {}", channel.unwrap_or_default()),
        )
    })
}

fn read_route(app: &Arc<App>, name: &str, q: &Query, headers: &HeaderMap) -> Handled {
    let etag = headers.get(IF_NONE_MATCH);
    let scope = scope_of(app, q)?;
    let now = app.clock.now();
    match name {
        "/api/stats_v2" => Ok(cached_json(etag, app.stats_v2_json(scope, now))),
        "/api/stats" => {
            let stats = app.engine().stats_v2(now, scope);
            let body = serde_json::to_vec(&LegacyStats::from(&stats)).unwrap_or_default();
            Ok(cached_json(etag, body.into()))
        }
        "/api/stats/range" => {
            let since = iso_param(q.either("since", "after"))?.unwrap_or(Micros(0));
            let until = iso_param(q.either("until", "before"))?.unwrap_or(now);
            let stats = {
                let mut engine = app.engine();
                engine.advance(now);
                engine.range_stats(since, until, scope)
            };
            Ok(ok_json(&json!({
                "stats": stats,
                "since": since.to_iso(),
                "until": until.to_iso(),
            })))
        }
        "/api/tickets" => tickets(app, q, scope, now),
        "/api/stats/timeseries" => timeseries(app, q, scope, now),
        "/api/ticket" => {
            let Some(raw) = q.get("id") else {
                return Err(error(StatusCode::BAD_REQUEST, "missing_ticket_id"));
            };
            let digits = raw.strip_prefix(['+', '-']).unwrap_or(raw);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(error(StatusCode::BAD_REQUEST, "invalid_ticket_id"));
            }
            let id = if raw.starts_with('-') {
                None
            } else {
                digits.parse::<u64>().ok()
            };
            let mut engine = app.engine();
            engine.advance(now);
            match id.and_then(|id| engine.ticket(id, scope)) {
                Some(mut t) => {
                    drop(engine);
                    if app.settings.hide_descriptions {
                        t.description.clear();
                    }
                    Ok(ok_json(&t))
                }
                None => Err(error(StatusCode::NOT_FOUND, "ticket_not_found")),
            }
        }
        "/api/user" => {
            let Some(id) = q.get("id") else {
                return Err(error(StatusCode::BAD_REQUEST, "missing_user_id"));
            };
            let mut engine = app.engine();
            engine.advance(now);
            match engine.user(id, scope) {
                Some(u) => Ok(ok_json(&u)),
                None => Err(error(StatusCode::NOT_FOUND, "user_not_found")),
            }
        }
        "/api/stream" => {
            let last_seen = headers
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            Ok(stream(app.clone(), scope, last_seen))
        }
        _ => Err(error(StatusCode::NOT_FOUND, "not_found")),
    }
}

fn tickets(app: &App, q: &Query, scope: usize, now: Micros) -> Handled {
    let status = match q.get("status") {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid status parameter: {s}"),
            )
        })?),
    };
    let since = iso_param(q.either("since", "after"))?;
    let until = iso_param(q.either("until", "before"))?;
    if matches!(status, None | Some(Status::Closed)) && since.is_none() && until.is_none() {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            body: json!({
                "error": "Provided filters are too broad",
                "tip": "Please provide a ?since= or ?until= parameter, or filter by ?status=open or ?status=in_progress"
            }),
            allow: None,
        });
    }
    let mut engine = app.engine();
    engine.advance(now);
    let mut list = engine.tickets(
        TicketQuery {
            status,
            since,
            until,
        },
        scope,
    );
    drop(engine);
    if app.settings.hide_descriptions {
        list.iter_mut().for_each(|t| t.description.clear());
    }
    Ok(ok_json(&list))
}

/// Most buckets one timeseries answer may hold.
const MAX_BUCKETS: i64 = 5_000;

fn timeseries(app: &App, q: &Query, scope: usize, now: Micros) -> Handled {
    let width = match q.get("bucket") {
        None => Width::Hour,
        Some(b) => Width::parse(b).ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid bucket parameter: {b}"),
            )
        })?,
    };
    let until = iso_param(q.either("until", "before"))?.unwrap_or(now);
    let since = iso_param(q.either("since", "after"))?.unwrap_or(until.plus(-7 * DAY));
    let count = (until.0 - width.floor(since)).max(0) / width.micros();
    if count > MAX_BUCKETS {
        return Err(error(
            StatusCode::BAD_REQUEST,
            &format!("Too many buckets: {count} (at most {MAX_BUCKETS}); narrow since/until or use bucket=day"),
        ));
    }
    let mut engine = app.engine();
    engine.advance(now);
    let points = engine.timeseries(width, since, until, scope);
    drop(engine);
    Ok(ok_json(
        &json!({ "bucket": width.as_str(), "buckets": points }),
    ))
}

fn dashboard() -> Response<Body> {
    let mut r = Response::new(full(include_str!("dashboard.html")));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn metrics(app: &App) -> Response<Body> {
    {
        let mut engine = app.engine();
        let now = app.clock.now();
        for scope in 0..=engine.config().help_channels.len() {
            let channel = if scope == 0 {
                "all".to_string()
            } else {
                engine.channel_name(scope as u16 - 1).to_string()
            };
            let s = engine.stats_v2(now, scope);
            let a = &s.all_time;
            for (status, n) in [
                ("open", a.tickets_open),
                ("in_progress", a.tickets_in_progress),
                ("closed", a.tickets_closed),
            ] {
                app.metrics
                    .tickets
                    .get_or_create(&vec![
                        ("status", status.into()),
                        ("channel", channel.clone()),
                    ])
                    .set(n as i64);
            }
            if scope == 0 {
                app.metrics.oldest_unanswered.set(
                    a.oldest_unanswered_ticket
                        .as_ref()
                        .map_or(0.0, |o| o.age_minutes),
                );
                for (w, st) in [
                    ("past_24h", &s.past_24h),
                    ("past_24h_previous", &s.past_24h_previous),
                    ("past_7d", &s.past_7d),
                    ("past_7d_previous", &s.past_7d_previous),
                ] {
                    app.metrics
                        .window_new
                        .get_or_create(&vec![("window", w.into())])
                        .set(st.new_tickets_total as i64);
                }
            }
        }
    }
    let mut r = Response::new(full(app.metrics.encode()));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

async fn slack_events(app: &Arc<App>, req: Request<Incoming>) -> Handled {
    let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, "body exceeds 1 MiB");
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let signature = header("x-slack-signature");
    let timestamp = header("x-slack-request-timestamp");
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(_) => return Err(error(StatusCode::BAD_REQUEST, "could not read body")),
    };
    let Some(secret) = app.settings.signing_secret.as_deref() else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "no signing secret configured: set SLACK_SIGNING_SECRET",
        ));
    };
    if let Err(e) =
        slack::verify_signature(secret, signature.as_deref(), timestamp.as_deref(), &body)
    {
        tracing::warn!(error = %e, "refused Slack request");
        return Err(error(StatusCode::UNAUTHORIZED, "invalid_signature"));
    }
    match slack::decode(&body) {
        Err(e) => {
            app.metrics.event("invalid_body", "rejected");
            tracing::warn!(error = %e, "refused signed body");
            Err(error(StatusCode::BAD_REQUEST, &e.to_string()))
        }
        Ok(SlackBody::UrlVerification(challenge)) => {
            Ok(ok_json(&json!({ "challenge": challenge })))
        }
        Ok(SlackBody::Notice(kind)) => {
            app.metrics.event(&kind, "ignored");
            Ok(ok_json(&json!({"ok": true})))
        }
        Ok(SlackBody::Rejected { kind, reason }) => {
            app.metrics.event(&kind, "rejected");
            tracing::warn!(%kind, %reason, "rejected malformed event");
            Ok(ok_json(&json!({"ok": true})))
        }
        Ok(SlackBody::Event(d)) => match app.ingest(&d) {
            Ok(_) => Ok(ok_json(&json!({"ok": true}))),
            Err(e) => {
                tracing::error!(error = %e, "journal write failed; not acknowledging");
                Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "journal_unavailable",
                ))
            }
        },
    }
}

// ---------------------------------------------------------------- SSE

/// A body fed by a channel: each message is one chunk of the event stream.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

fn sse_event(version: u64, json: &[u8]) -> Bytes {
    let mut out = format!("event: stats_v2\nid: {version}\ndata: ").into_bytes();
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    out.into()
}

/// `last_seen`: the client's `Last-Event-ID`; when it names the current state
/// version, the reconnecting client already has these stats and is not sent them again.
fn stream(app: Arc<App>, scope: usize, mut last_seen: Option<u64>) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let mut versions = app.version.subscribe();
    let mut tickets = app.ticket_events.subscribe();
    tokio::spawn(async move {
        app.metrics.sse_subscribers.inc();
        let mut heartbeat = tokio::time::interval(Duration::from_secs(15));
        heartbeat.tick().await;
        loop {
            let version = *versions.borrow_and_update();
            if last_seen.take() != Some(version) {
                let json = app.stats_v2_json(scope, app.clock.now());
                if tx.send(sse_event(version, &json)).await.is_err() {
                    break;
                }
            }
            tokio::time::sleep(app.settings.stream_interval).await;
            let closed = loop {
                tokio::select! {
                    r = versions.changed() => break r.is_err(),
                    t = tickets.recv() => match t {
                        Ok((s, chunk)) if scope == 0 || s == scope => {
                            if tx.send(chunk).await.is_err() {
                                break true;
                            }
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break true,
                    },
                    _ = heartbeat.tick() => {
                        if tx.send(Bytes::from_static(b": heartbeat\n\n")).await.is_err() {
                            break true;
                        }
                    }
                    _ = tx.closed() => break true,
                }
            };
            if closed {
                break;
            }
        }
        app.metrics.sse_subscribers.dec();
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

// ---------------------------------------------------------------- serving

/// Serves until `shutdown` resolves, then drains connections for up to two seconds
/// and drops those still open (event streams never finish on their own).
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Connection tasks, so that streams still open after the grace period are
    // dropped (an SSE response never completes on its own).
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(handle(app, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                conns.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
    }
    conns.shutdown().await;
    Ok(())
}
