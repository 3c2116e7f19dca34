//! Socket Mode, the helper roster and backfill against a fake Slack started in
//! each test: a hyper 1 HTTP server answering the Web API methods Seshat calls
//! (`auth.test`, `apps.connections.open`, `conversations.members`,
//! `conversations.history`, `conversations.replies`, `users.info`) with Slack's response
//! shapes, opaque cursors and small pages, and a WebSocket endpoint speaking
//! the Socket Mode protocol (hello, `events_api` envelopes, acks, `disconnect`,
//! redelivery of unacknowledged envelopes on the next connection). Only
//! 127.0.0.1 is ever contacted.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use seshat::connect::{
    self, ApiOptions, BackfillOptions, Client, SlackApi, SocketMode, SocketOptions,
};
use seshat::engine::Engine;
use seshat::model::{Config, Delivery, Event, Status};
use seshat::server::{App, Clock, Settings};
use seshat::slack;
use seshat::time::Micros;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Frame;

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600;
const HELP: &str = "C0HELP0001";
const TEAM: &str = "C0TEAM0001";
const BOT_TOKEN: &str = "xoxb-test-bot";
const APP_TOKEN: &str = "xapp-test-app";
const BOT_USER: &str = "U0SESHAT";
/// Every wait is a failure bound only.
const BOUND: Duration = Duration::from_secs(20);

fn ts(off: i64) -> String {
    format!("{}.{:06}", T0 + off, 100)
}

fn config() -> Config {
    Config {
        help_channels: vec![HELP.into()],
        team_channel: Some(TEAM.into()),
        helpers: vec!["U0HELPER1".into(), "U0HELPER2".into()],
        trusted_bots: vec!["U0NEPHTHY".into()],
        ..Config::default()
    }
}

fn new_app(config: Config) -> Arc<App> {
    Arc::new(App::new(
        Engine::new(config),
        Clock::Fixed(Micros((T0 + 2 * 86_400) * 1_000_000)),
        Settings::default(),
    ))
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < BOUND, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ====================================================================== Slack's view

/// A message event as the Events API delivers it.
fn message(off: i64, user: &str, text: &str) -> Value {
    json!({"type": "message", "channel": HELP, "channel_type": "channel", "user": user,
           "text": text, "ts": ts(off), "event_ts": ts(off), "team": "T0TEAM",
           "client_msg_id": format!("c{off}"),
           "blocks": [{"type": "rich_text", "block_id": format!("b{off}"), "elements": [
               {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}]}]})
}

fn reply(off: i64, thread: i64, user: &str, text: &str) -> Value {
    let mut m = message(off, user, text);
    m["thread_ts"] = json!(ts(thread));
    m["parent_user_id"] = json!("U0SOMEONE");
    m
}

fn bot_message(off: i64, text: &str) -> Value {
    json!({"type": "message", "subtype": "bot_message", "channel": HELP, "bot_id": "B0OTHER",
           "username": "other bot", "text": text, "ts": ts(off), "event_ts": ts(off)})
}

fn join_message(off: i64, user: &str) -> Value {
    json!({"type": "message", "subtype": "channel_join", "channel": HELP, "user": user,
           "text": format!("<@{user}> has joined the channel"), "ts": ts(off), "event_ts": ts(off)})
}

fn edited(off: i64, at: i64, user: &str, text: &str) -> Value {
    json!({"type": "message", "subtype": "message_changed", "channel": HELP, "hidden": true,
           "ts": ts(at), "event_ts": ts(at),
           "message": {"type": "message", "user": user, "text": text, "ts": ts(off),
                       "edited": {"user": user, "ts": ts(at)}},
           "previous_message": {"type": "message", "user": user, "text": "old", "ts": ts(off)}})
}

fn reaction(off: i64, item: i64, user: &str) -> Value {
    json!({"type": "reaction_added", "user": user, "reaction": "white_check_mark",
           "item_user": "U0SOMEONE", "event_ts": ts(off),
           "item": {"type": "message", "channel": HELP, "ts": ts(item)}})
}

/// The Events API body around an event.
fn callback(event: &Value, id: &str) -> Value {
    let time = event
        .get("event_ts")
        .and_then(Value::as_str)
        .and_then(|t| t.split('.').next())
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(T0);
    json!({"token": "verification", "team_id": "T0TEAM", "api_app_id": "A0SESHAT",
           "event": event, "type": "event_callback", "event_id": id, "event_time": time,
           "authorizations": [{"enterprise_id": null, "team_id": "T0TEAM", "user_id": BOT_USER,
                               "is_bot": true, "is_enterprise_install": false}],
           "is_ext_shared_channel": false, "event_context": "4-eyJldCI6Im1lc3NhZ2UifQ"})
}

/// Channel history and threads as `conversations.history` / `.replies` show them,
/// built from the events that happened.
#[derive(Default, Clone)]
struct History {
    /// channel → top-level messages by ts.
    channels: HashMap<String, BTreeMap<String, Value>>,
    /// (channel, thread ts) → replies by ts.
    threads: HashMap<(String, String), BTreeMap<String, Value>>,
}

impl History {
    fn from_events(events: &[Value]) -> Self {
        let mut h = History::default();
        h.channels.entry(HELP.into()).or_default();
        for e in events {
            let channel = e["channel"]
                .as_str()
                .or(e["item"]["channel"].as_str())
                .unwrap_or(HELP)
                .to_string();
            match (e["type"].as_str(), e["subtype"].as_str()) {
                (Some("message"), Some("message_changed")) => {
                    let inner = &e["message"];
                    let ts = inner["ts"].as_str().unwrap().to_string();
                    if let Some(m) = h.channels.entry(channel).or_default().get_mut(&ts) {
                        m["text"] = inner["text"].clone();
                        m["edited"] = inner["edited"].clone();
                    }
                }
                (Some("message"), _) => {
                    let mut m = e.clone();
                    let obj = m.as_object_mut().unwrap();
                    for k in ["channel", "channel_type", "event_ts"] {
                        obj.remove(k);
                    }
                    let ts = m["ts"].as_str().unwrap().to_string();
                    match m["thread_ts"].as_str().map(String::from) {
                        Some(thread) if thread != ts => {
                            if let Some(p) = h
                                .channels
                                .entry(channel.clone())
                                .or_default()
                                .get_mut(&thread)
                            {
                                p["thread_ts"] = json!(thread);
                                p["reply_count"] =
                                    json!(p["reply_count"].as_u64().unwrap_or(0) + 1);
                                p["latest_reply"] = json!(ts);
                                let mut users: Vec<Value> =
                                    p["reply_users"].as_array().cloned().unwrap_or_default();
                                if !users.contains(&m["user"]) && !m["user"].is_null() {
                                    users.push(m["user"].clone());
                                }
                                p["reply_users_count"] = json!(users.len());
                                p["reply_users"] = json!(users);
                                p["is_locked"] = json!(false);
                                p["subscribed"] = json!(false);
                            }
                            h.threads
                                .entry((channel, thread))
                                .or_default()
                                .insert(ts, m);
                        }
                        _ => {
                            h.channels.entry(channel).or_default().insert(ts, m);
                        }
                    }
                }
                (Some("reaction_added"), _) => {
                    let item = e["item"]["ts"].as_str().unwrap();
                    if let Some(p) = h.channels.entry(channel).or_default().get_mut(item) {
                        let mut rs = p["reactions"].as_array().cloned().unwrap_or_default();
                        let name = e["reaction"].clone();
                        match rs.iter_mut().find(|r| r["name"] == name) {
                            Some(r) => {
                                r["users"].as_array_mut().unwrap().push(e["user"].clone());
                                r["count"] = json!(r["users"].as_array().unwrap().len());
                            }
                            None => {
                                rs.push(json!({"name": name, "users": [e["user"]], "count": 1}))
                            }
                        }
                        p["reactions"] = json!(rs);
                    }
                }
                _ => {}
            }
        }
        h
    }
}

// ====================================================================== the fake

#[derive(Debug, Clone)]
struct Call {
    method: String,
    params: HashMap<String, String>,
    at: Instant,
    status: u16,
}

enum WsCmd {
    Send(String),
    Drop,
}

#[derive(Default)]
struct State {
    history: History,
    members: HashMap<String, Vec<String>>,
    /// Channels whose history needs a scope the token lacks.
    missing_scope: HashSet<String>,
    /// `users.info` answers by user id (the `user` object).
    users: HashMap<String, Value>,
    /// The token lacks `users:read`.
    no_users_read: bool,
    page: usize,
    calls: Vec<Call>,
    /// (method, n): the n-th call (1-based) of `method` answers 429 once.
    rate_limit: Option<(String, usize)>,
    /// Refuse the next n `apps.connections.open` calls.
    open_failures: usize,
    ws_url: String,
    // Socket Mode
    connections: Vec<mpsc::UnboundedSender<WsCmd>>,
    /// Envelopes sent and not acknowledged, in order: (envelope id, payload).
    pending: Vec<(String, Value)>,
    acked: Vec<String>,
    next_envelope: usize,
}

struct Fake {
    state: Mutex<State>,
    api_url: String,
}

impl Fake {
    async fn start(history: History, members: HashMap<String, Vec<String>>) -> Arc<Fake> {
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_url = format!("http://{}/api", http.local_addr().unwrap());
        let fake = Arc::new(Fake {
            state: Mutex::new(State {
                history,
                members,
                page: 2,
                ws_url: format!(
                    "ws://{}/link/?ticket=t0&app_id=A0SESHAT",
                    ws.local_addr().unwrap()
                ),
                ..State::default()
            }),
            api_url,
        });
        let f = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = http.accept().await else {
                    break;
                };
                let f = f.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let f = f.clone();
                        async move { Ok::<_, Infallible>(f.web_api(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let f = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = ws.accept().await else {
                    break;
                };
                tokio::spawn(f.clone().socket(stream));
            }
        });
        fake
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn calls(&self, method: &str) -> Vec<Call> {
        self.state()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    // ------------------------------------------------------------ Web API

    async fn web_api(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.uri().path().trim_start_matches("/api/").to_string();
        let mut params: HashMap<String, String> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim_start_matches("Bearer ")
            .to_string();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(&body) {
            for (k, v) in o {
                params.insert(k, v.as_str().map(String::from).unwrap_or(v.to_string()));
            }
        }
        let (status, retry_after, answer) = self.answer(&method, &params, &auth);
        self.state().calls.push(Call {
            method,
            params,
            at: Instant::now(),
            status: status.as_u16(),
        });
        let mut r = Response::new(Full::new(Bytes::from(answer.to_string())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            "content-type",
            "application/json; charset=utf-8".parse().unwrap(),
        );
        if let Some(s) = retry_after {
            r.headers_mut()
                .insert("retry-after", s.to_string().parse().unwrap());
        }
        r
    }

    fn answer(
        &self,
        method: &str,
        params: &HashMap<String, String>,
        auth: &str,
    ) -> (StatusCode, Option<u64>, Value) {
        let mut st = self.state();
        let n = st.calls.iter().filter(|c| c.method == method).count() + 1;
        if st
            .rate_limit
            .as_ref()
            .is_some_and(|(m, k)| m == method && *k == n)
        {
            st.rate_limit = None;
            return (
                StatusCode::TOO_MANY_REQUESTS,
                Some(1),
                json!({"ok": false, "error": "ratelimited"}),
            );
        }
        let error = |e: &str| (StatusCode::OK, None, json!({"ok": false, "error": e}));
        let want = if method == "apps.connections.open" {
            APP_TOKEN
        } else {
            BOT_TOKEN
        };
        if auth.is_empty() {
            return error("not_authed");
        }
        if auth != want {
            return if auth == APP_TOKEN || auth == BOT_TOKEN {
                error("not_allowed_token_type")
            } else {
                error("invalid_auth")
            };
        }
        let ok = |v: Value| (StatusCode::OK, None, v);
        let channel = params.get("channel").cloned().unwrap_or_default();
        let page = params
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(100)
            .min(st.page);
        let offset = params
            .get("cursor")
            .and_then(|c| c.strip_prefix("dXNlcjo"))
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or(0);
        let cursor = |next: usize, len: usize| {
            if next < len {
                format!("dXNlcjo{next}")
            } else {
                String::new()
            }
        };
        match method {
            "auth.test" => ok(
                json!({"ok": true, "url": "https://seshat-support.slack.com/",
                "team": "Seshat Support", "user": "seshat", "team_id": "T0TEAM",
                "user_id": BOT_USER, "bot_id": "B0SESHAT", "is_enterprise_install": false}),
            ),
            "apps.connections.open" => {
                if st.open_failures > 0 {
                    st.open_failures -= 1;
                    return error("internal_error");
                }
                ok(json!({"ok": true, "url": st.ws_url}))
            }
            "conversations.members" => {
                let Some(all) = st.members.get(&channel) else {
                    return error("channel_not_found");
                };
                let slice: Vec<&String> = all.iter().skip(offset).take(page).collect();
                ok(json!({"ok": true, "members": slice,
                    "response_metadata": {"next_cursor": cursor(offset + page, all.len())}}))
            }
            "conversations.history" => {
                if st.missing_scope.contains(&channel) {
                    return (
                        StatusCode::OK,
                        None,
                        json!({"ok": false, "error": "missing_scope",
                        "needed": "groups:history", "provided": "channels:history,channels:read"}),
                    );
                }
                let Some(msgs) = st.history.channels.get(&channel) else {
                    return error("channel_not_found");
                };
                let bound = |k: &str| params.get(k).and_then(|t| t.parse::<f64>().ok());
                let inclusive = params.get("inclusive").is_some_and(|v| v == "true");
                let (oldest, latest) = (bound("oldest"), bound("latest"));
                // Newest first, as Slack answers.
                let all: Vec<&Value> = msgs
                    .iter()
                    .rev()
                    .filter(|(t, _)| {
                        let t: f64 = t.parse().unwrap();
                        oldest.is_none_or(|o| if inclusive { t >= o } else { t > o })
                            && latest.is_none_or(|l| if inclusive { t <= l } else { t < l })
                    })
                    .map(|(_, m)| m)
                    .collect();
                let slice: Vec<&Value> = all.iter().skip(offset).take(page).copied().collect();
                let next = cursor(offset + page, all.len());
                ok(
                    json!({"ok": true, "messages": slice, "has_more": !next.is_empty(),
                    "pin_count": 0, "channel_actions_ts": null, "channel_actions_count": 0,
                    "response_metadata": {"next_cursor": next}}),
                )
            }
            "conversations.replies" => {
                let thread = params.get("ts").cloned().unwrap_or_default();
                let Some(parent) = st
                    .history
                    .channels
                    .get(&channel)
                    .and_then(|c| c.get(&thread))
                    .cloned()
                else {
                    return error("thread_not_found");
                };
                let mut all: Vec<Value> = vec![parent];
                if let Some(r) = st.history.threads.get(&(channel.clone(), thread)) {
                    all.extend(r.values().cloned());
                }
                let slice: Vec<Value> = all.iter().skip(offset).take(page).cloned().collect();
                let next = cursor(offset + page, all.len());
                ok(
                    json!({"ok": true, "messages": slice, "has_more": !next.is_empty(),
                    "response_metadata": {"next_cursor": next}}),
                )
            }
            "users.info" => {
                if st.no_users_read {
                    return (
                        StatusCode::OK,
                        None,
                        json!({"ok": false, "error": "missing_scope",
                        "needed": "users:read", "provided": "channels:history,channels:read"}),
                    );
                }
                let id = params.get("user").cloned().unwrap_or_default();
                match st.users.get(&id) {
                    Some(u) => ok(json!({"ok": true, "user": u})),
                    None => error("user_not_found"),
                }
            }
            _ => error("unknown_method"),
        }
    }

    // ------------------------------------------------------------ Socket Mode

    fn envelope(id: &str, payload: &Value, retry: u32) -> String {
        json!({"envelope_id": id, "payload": payload, "type": "events_api",
               "accepts_response_payload": false, "retry_attempt": retry,
               "retry_reason": if retry > 0 { "timeout" } else { "" }})
        .to_string()
    }

    async fn socket(self: Arc<Self>, stream: tokio::net::TcpStream) {
        let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        let (mut tx, mut rx) = ws.split();
        let (ctx, mut crx) = mpsc::unbounded_channel::<WsCmd>();
        let redeliver = {
            let mut st = self.state();
            st.connections.push(ctx);
            st.pending.clone()
        };
        let hello = json!({"type": "hello", "num_connections": 1,
            "debug_info": {"host": "applink-fake-1", "build_number": 105,
                           "approximate_connection_time": 18060},
            "connection_info": {"app_id": "A0SESHAT"}});
        if tx
            .send(Frame::Text(hello.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
        // Slack redelivers what was not acknowledged on the connection it is sent to.
        for (id, payload) in redeliver {
            let _ = tx
                .send(Frame::Text(Fake::envelope(&id, &payload, 1).into()))
                .await;
        }
        loop {
            tokio::select! {
                frame = rx.next() => match frame {
                    Some(Ok(Frame::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                        if let Some(id) = v["envelope_id"].as_str() {
                            let mut st = self.state();
                            st.pending.retain(|(p, _)| p != id);
                            st.acked.push(id.to_string());
                        }
                    }
                    Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                cmd = crx.recv() => match cmd {
                    Some(WsCmd::Send(s)) => {
                        if tx.send(Frame::Text(s.into())).await.is_err() {
                            break;
                        }
                    }
                    // Drop the TCP connection without a close handshake.
                    Some(WsCmd::Drop) | None => return,
                },
            }
        }
    }

    fn ws_count(&self) -> usize {
        self.state().connections.len()
    }

    fn to_latest(&self, cmd: WsCmd) {
        let st = self.state();
        let _ = st.connections.last().expect("a connection").send(cmd);
    }

    /// Sends an event in a new envelope on the newest connection; returns the envelope id.
    fn deliver(&self, payload: &Value) -> String {
        let id = {
            let mut st = self.state();
            st.next_envelope += 1;
            let id = format!("env-{}", st.next_envelope);
            st.pending.push((id.clone(), payload.clone()));
            id
        };
        self.to_latest(WsCmd::Send(Fake::envelope(&id, payload, 0)));
        id
    }

    fn acked(&self, id: &str) -> bool {
        self.state().acked.iter().any(|a| a == id)
    }
}

/// A `users.info` user object as Slack answers it (a full member of the workspace).
fn slack_user(id: &str, name: &str, real_name: &str, display_name: &str) -> Value {
    let image = |px: u32| format!("https://avatars.slack-edge.com/2025-01-01/{id}_{px}.png");
    json!({
        "id": id, "team_id": "T0TEAM", "name": name, "deleted": false, "color": "9f69e7",
        "real_name": real_name, "tz": "Europe/Paris", "tz_label": "Central European Time",
        "tz_offset": 3600,
        "profile": {
            "title": "", "phone": "", "skype": "", "real_name": real_name,
            "real_name_normalized": real_name, "display_name": display_name,
            "display_name_normalized": display_name, "fields": null,
            "status_text": "", "status_emoji": "", "status_emoji_display_info": [],
            "status_expiration": 0, "avatar_hash": "ge3b51ca72de",
            "first_name": real_name.split(' ').next().unwrap_or(""),
            "last_name": real_name.split(' ').nth(1).unwrap_or(""),
            "email": format!("{name}@seshat-support.example"),
            "image_24": image(24), "image_32": image(32), "image_48": image(48),
            "image_72": image(72), "image_192": image(192), "image_512": image(512),
            "team": "T0TEAM"
        },
        "is_admin": false, "is_owner": false, "is_primary_owner": false,
        "is_restricted": false, "is_ultra_restricted": false, "is_bot": false,
        "is_app_user": false, "updated": 1_767_225_600, "is_email_confirmed": true,
        "has_2fa": false, "who_can_share_contact_card": "EVERYONE"
    })
}

fn test_client(fake: &Fake, history_per_minute: Option<u32>) -> Arc<Client<HttpConnector>> {
    connect::http_client(
        &fake.api_url,
        &ApiOptions {
            history_per_minute,
            ..ApiOptions::default()
        },
    )
}

async fn test_api(fake: &Fake) -> SlackApi<HttpConnector> {
    let opts = ApiOptions {
        history_per_minute: Some(6000),
        ..ApiOptions::default()
    };
    SlackApi::connect(test_client(fake, Some(6000)), BOT_TOKEN, opts)
        .await
        .expect("auth.test")
}

/// (ts, status, assignee, closer, tags, description) of a ticket.
type Summary = (
    String,
    Status,
    Option<String>,
    Option<String>,
    Vec<String>,
    String,
);

/// Ticket states by top-level ts, with Slack ids, for comparisons.
fn tickets(app: &App) -> Vec<Summary> {
    let e = app.engine();
    let sid = |u: Option<seshat::model::UserId>| u.and_then(|u| e.slack_id(u)).map(String::from);
    let mut v: Vec<_> = e
        .all_tickets()
        .map(|t| {
            (
                t.message_ts.clone(),
                t.status,
                sid(t.assigned_to),
                sid(t.closed_by),
                t.tags.clone(),
                t.description.clone(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn live(app: &App, events: &[(Value, String)]) {
    for (e, id) in events {
        match slack::decode_value(callback(e, id)).unwrap() {
            slack::Body::Event(d) => {
                app.ingest(&d).unwrap();
            }
            other => panic!("not an event: {other:?}"),
        }
    }
}

fn ids(events: Vec<Value>) -> Vec<(Value, String)> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| (e, format!("Ev{i:04}")))
        .collect()
}

// ====================================================================== roster

#[tokio::test]
async fn roster_reads_every_page_drops_the_bot_and_applies_joins_and_leaves() {
    let members = HashMap::from([(
        TEAM.to_string(),
        ["U0HELPER1", "U0A", "U0B", BOT_USER, "U0C"]
            .map(String::from)
            .to_vec(),
    )]);
    let fake = Fake::start(History::default(), members).await;
    let app = new_app(config());
    // A helper who joined earlier, and has since left the channel.
    app.ingest(&Delivery {
        event_id: Some("EvOld".into()),
        time: Micros(T0 * 1_000_000),
        bot_user: None,
        event: Event::Member {
            joined: true,
            user: "U0GONE".into(),
            channel: TEAM.into(),
        },
    })
    .unwrap();
    let api = test_api(&fake).await;
    assert_eq!(api.identity.user_id, BOT_USER);

    let change = connect::sync_roster(&app, &api, TEAM).await.unwrap();
    assert_eq!(change.members, 4);
    assert_eq!(change.joined, ["U0A", "U0B", "U0C"]);
    // U0HELPER2 is in HELPERS: kept although not in the channel.
    assert_eq!(change.left, ["U0GONE"]);
    assert_eq!(
        app.engine().helpers(),
        ["U0A", "U0B", "U0C", "U0HELPER1", "U0HELPER2"]
    );
    // 5 members, pages of 2: three pages, each after the previous page's cursor.
    let calls = fake.calls("conversations.members");
    assert_eq!(calls.len(), 3);
    let cursors: Vec<Option<&str>> = calls
        .iter()
        .map(|c| c.params.get("cursor").map(String::as_str))
        .collect();
    assert_eq!(cursors[0], None);
    assert_eq!(cursors[1], Some("dXNlcjo2"));
    assert_eq!(cursors[2], Some("dXNlcjo4"));

    // Nothing changed: nothing applied.
    let version = app.engine().version();
    let again = connect::sync_roster(&app, &api, TEAM).await.unwrap();
    assert!(again.joined.is_empty() && again.left.is_empty());
    assert_eq!(app.engine().version(), version);

    // Someone leaves the team channel.
    fake.state()
        .members
        .get_mut(TEAM)
        .unwrap()
        .retain(|m| m != "U0B");
    let change = connect::sync_roster(&app, &api, TEAM).await.unwrap();
    assert_eq!(change.left, ["U0B"]);
    assert!(!app.engine().helpers().contains(&"U0B".to_string()));
}

// ====================================================================== backfill

/// A small story: two closes (macro, trusted bot's ✅), a reassignment, an edit,
/// a tag, noise, and threads long enough to span several pages.
fn story() -> Vec<Value> {
    vec![
        message(0, "U0ASKER1", "How do I deploy?"),
        reply(60, 0, "U0HELPER1", "Try the deploy guide"),
        reply(120, 0, "U0ASKER1", "thanks!"),
        reply(180, 0, "U0HELPER1", "?resolve"),
        message(300, "U0ASKER2", "Login is broken"),
        bot_message(360, "Daily digest"),
        message(400, "U0ASKER3", "Build fails"),
        edited(400, 410, "U0ASKER3", "Build fails on CI"),
        reply(420, 400, "U0HELPER2", "Which CI?"),
        reply(480, 400, "U0HELPER1", "Looks like a cache issue"),
        reaction(500, 400, "U0NEPHTHY"),
        message(600, "U0ASKER4", "Where are the docs?"),
        reply(610, 600, "U0ASKER4", "anyone?"),
        reply(620, 600, "U0OTHER", "same question"),
        reply(630, 600, "U0ASKER4", "bump"),
        reply(640, 600, "U0OTHER", "+1"),
        reply(650, 600, "U0ASKER4", "found them"),
        join_message(700, "U0NEWBIE"),
        message(800, "U0ASKER5", "Billing question"),
        reply(810, 800, "U0HELPER2", "?tag billing"),
        message(900, "U0ASKER6", "Hello?"),
    ]
}

#[tokio::test]
async fn backfill_reads_every_page_and_a_second_run_changes_nothing() {
    let fake = Fake::start(History::from_events(&story()), HashMap::new()).await;
    let app = new_app(config());
    let api = test_api(&fake).await;
    let opts = BackfillOptions {
        progress: false,
        ..BackfillOptions::since(Micros(T0 * 1_000_000))
    };
    let report = connect::backfill_with(&app, &api, &[HELP.to_string()], &opts)
        .await
        .unwrap();

    // 8 top-level messages in pages of 2; threads of 4, 3, 6 and 2 messages.
    assert_eq!(fake.calls("conversations.history").len(), 4);
    assert_eq!(fake.calls("conversations.replies").len(), 2 + 2 + 3 + 1);
    assert_eq!(report.requests, 12);
    assert_eq!(report.threads, 4);
    assert_eq!(report.messages_read, 8 + 4 + 3 + 6 + 2);
    // Every history page after the first asks for the previous page's cursor.
    let hist = fake.calls("conversations.history");
    assert_eq!(hist[0].params.get("cursor"), None);
    assert_eq!(
        hist[1].params.get("cursor").map(String::as_str),
        Some("dXNlcjo2")
    );
    assert_eq!(
        hist[3].params.get("cursor").map(String::as_str),
        Some("dXNlcjo6")
    );
    assert_eq!(
        hist[0].params.get("oldest").map(String::as_str),
        Some("1767225600.000000")
    );

    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        tickets(&app),
        vec![
            (
                ts(0),
                Status::Closed,
                s("U0HELPER1"),
                s("U0HELPER1"),
                vec![],
                "How do I deploy?".into()
            ),
            (
                ts(300),
                Status::Open,
                None,
                None,
                vec![],
                "Login is broken".into()
            ),
            // ✅ by the trusted bot: the assignee is credited.
            (
                ts(400),
                Status::Closed,
                s("U0HELPER1"),
                s("U0HELPER1"),
                vec![],
                "Build fails on CI".into()
            ),
            (
                ts(600),
                Status::Open,
                None,
                None,
                vec![],
                "Where are the docs?".into()
            ),
            (
                ts(800),
                Status::Open,
                None,
                None,
                vec!["billing".into()],
                "Billing question".into()
            ),
            (ts(900), Status::Open, None, None, vec![], "Hello?".into()),
        ]
    );

    // The same period again: nothing changes, not even the version.
    let version = app.engine().version();
    let stats = app.stats_v2_json(0, app.clock.now());
    let again = connect::backfill_with(&app, &api, &[HELP.to_string()], &opts)
        .await
        .unwrap();
    assert_eq!(again.applied, 0, "{again:?}");
    assert_eq!(app.engine().version(), version);
    assert_eq!(app.stats_v2_json(0, app.clock.now()), stats);
}

#[tokio::test]
async fn a_ratelimited_page_is_retried_after_retry_after() {
    let fake = Fake::start(History::from_events(&story()), HashMap::new()).await;
    fake.state().rate_limit = Some(("conversations.history".into(), 2));
    let app = new_app(config());
    let api = test_api(&fake).await;
    let opts = BackfillOptions {
        progress: false,
        ..BackfillOptions::since(Micros(T0 * 1_000_000))
    };
    connect::backfill_with(&app, &api, &[HELP.to_string()], &opts)
        .await
        .unwrap();
    let hist = fake.calls("conversations.history");
    assert_eq!(
        hist.iter().map(|c| c.status).collect::<Vec<_>>(),
        [200, 429, 200, 200, 200]
    );
    // The retry asks for the same page, no sooner than Retry-After: 1.
    assert_eq!(hist[1].params.get("cursor"), hist[2].params.get("cursor"));
    let waited = hist[2].at.duration_since(hist[1].at);
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}"
    );
    assert_eq!(tickets(&app).len(), 6);
}

#[tokio::test]
async fn backfill_over_a_gap_then_live_events_equals_an_uninterrupted_run() {
    let events = ids(vec![
        // two days before: a ticket still in progress, one closed
        message(-2 * 86_400, "U0OLD1", "Old open question"),
        reply(-2 * 86_400 + 60, -2 * 86_400, "U0HELPER1", "looking"),
        message(-86_400, "U0OLD2", "Old closed question"),
        reply(-86_400 + 60, -86_400, "U0HELPER1", "?resolve"),
        // before the outage
        message(0, "U0ASKER1", "First question"),
        reply(60, 0, "U0HELPER1", "On it"),
        message(120, "U0ASKER2", "Second question"),
        message(180, "U0ASKER3", "Third question"),
        reply(200, 180, "U0ASKER3", "more details"),
        // the outage: 4 hours later, nothing delivered for a while
        reply(14_400, 0, "U0ASKER1", "still broken"),
        // replies in threads older than where the catch-up starts
        reply(14_430, -2 * 86_400, "U0OLD1", "any news?"),
        reply(14_440, -86_400, "U0OLD2", "it broke again"),
        reply(14_450, -86_400, "U0HELPER2", "?reopen"),
        reply(14_460, 120, "U0HELPER2", "Can you share logs?"),
        reply(14_520, 0, "U0HELPER2", "Let me take over"),
        message(14_600, "U0ASKER4", "Gap question"),
        reply(14_660, 14_600, "U0HELPER1", "answer"),
        reply(14_700, 180, "U0HELPER1", "?resolve"),
        message(14_800, "U0ASKER5", "Another gap question"),
        // back up: live again
        reply(15_000, 14_800, "U0HELPER2", "hi"),
        reply(15_060, 14_600, "U0ASKER4", "thank you"),
        reply(15_120, 0, "U0HELPER2", "?resolve"),
        message(15_200, "U0ASKER6", "Live question"),
    ]);
    let (before, rest) = events.split_at(9);
    let (gap, after) = rest.split_at(10);

    let uninterrupted = new_app(config());
    live(&uninterrupted, &events);

    // Slack has everything, including what will also arrive live.
    let all: Vec<Value> = events.iter().map(|(e, _)| e.clone()).collect();
    let fake = Fake::start(History::from_events(&all), HashMap::new()).await;
    let app = new_app(config());
    live(&app, before);
    let api = test_api(&fake).await;
    let since = connect::catch_up_since(&app).unwrap();
    let live_since = Micros::from_slack_ts(&ts(15_000)).unwrap();
    let opts = BackfillOptions {
        until: Some(live_since),
        progress: false,
        ..BackfillOptions::since(since)
    };
    let report = connect::backfill_with(&app, &api, &[HELP.to_string()], &opts)
        .await
        .unwrap();
    assert_eq!(report.applied as usize, gap.len(), "{report:?}");
    live(&app, after);

    assert_eq!(tickets(&app), tickets(&uninterrupted));
    let now = app.clock.now();
    assert_eq!(
        String::from_utf8_lossy(&app.stats_v2_json(0, now)),
        String::from_utf8_lossy(&uninterrupted.stats_v2_json(0, now))
    );
    for u in ["U0ASKER1", "U0HELPER1", "U0HELPER2", "U0ASKER6"] {
        assert_eq!(
            app.engine().user(u, 0),
            uninterrupted.engine().user(u, 0),
            "{u}"
        );
    }

    // And once more over everything: nothing moves.
    let version = app.engine().version();
    let again = connect::backfill_with(
        &app,
        &api,
        &[HELP.to_string()],
        &BackfillOptions {
            progress: false,
            ..BackfillOptions::since(Micros(T0 * 1_000_000))
        },
    )
    .await
    .unwrap();
    assert_eq!(again.applied, 0, "{again:?}");
    assert_eq!(app.engine().version(), version);
}

// ====================================================================== errors

#[tokio::test]
async fn bad_tokens_missing_scopes_and_unknown_channels_are_one_line_errors() {
    let fake = Fake::start(History::from_events(&story()), HashMap::new()).await;
    let client = test_client(&fake, None);

    let e = SlackApi::connect(client.clone(), "xoxb-wrong", ApiOptions::default())
        .await
        .err()
        .expect("a bad token is refused");
    assert!(
        e.0.contains("SLACK_BOT_TOKEN") && e.0.contains("invalid_auth"),
        "{e}"
    );
    assert!(!e.0.contains('\n'));

    let e = SlackApi::connect(client.clone(), APP_TOKEN, ApiOptions::default())
        .await
        .err()
        .expect("an app token is not a bot token");
    assert!(e.0.contains("wrong kind of token"), "{e}");

    let api = test_api(&fake).await;
    let e = api.members("C0NOWHERE").await.unwrap_err();
    assert!(
        e.0.contains("C0NOWHERE") && e.0.contains("not found"),
        "{e}"
    );

    // A private channel the token cannot read: the state is left as it was.
    fake.state().missing_scope.insert("G0PRIVATE".into());
    fake.state()
        .history
        .channels
        .entry("G0PRIVATE".into())
        .or_default();
    let mut cfg = config();
    cfg.help_channels.push("G0PRIVATE".into());
    let app = new_app(cfg);
    let opts = BackfillOptions {
        progress: false,
        ..BackfillOptions::since(Micros(T0 * 1_000_000))
    };
    let e = connect::backfill_with(&app, &api, &[HELP.into(), "G0PRIVATE".into()], &opts)
        .await
        .unwrap_err();
    assert!(
        e.0.contains("`groups:history`") && e.0.contains("scope"),
        "{e}"
    );
    assert_eq!(app.engine().ticket_count(), 0);

    let e = connect::start_socket_mode(new_app(config()), client.clone(), "xapp-wrong", sockets())
        .await
        .err()
        .expect("a bad app token is refused");
    assert!(
        e.0.contains("SLACK_APP_TOKEN") && e.0.contains("invalid_auth"),
        "{e}"
    );
}

// ====================================================================== Socket Mode

fn sockets() -> SocketOptions {
    SocketOptions {
        connections: 1,
        reconnect_after: Duration::from_secs(1),
        ping_interval: Duration::from_secs(1),
        silence_watchdog: None,
    }
}

async fn socket(fake: &Arc<Fake>, app: &Arc<App>, opts: SocketOptions) -> SocketMode {
    let s = connect::start_socket_mode(app.clone(), test_client(fake, None), APP_TOKEN, opts)
        .await
        .expect("socket mode starts");
    eventually("the hello", || app.socket_connected.load(Ordering::Relaxed)).await;
    s
}

fn counter(app: &App, kind: &str, outcome: &str) -> u64 {
    let text = app.metrics.encode();
    let needle = format!("seshat_events_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test]
async fn socket_mode_applies_each_event_once_and_acknowledges_every_envelope() {
    let fake = Fake::start(History::default(), HashMap::new()).await;
    let app = new_app(config());
    let s = socket(&fake, &app, sockets()).await;
    assert!(app.metrics.encode().contains("seshat_socket_connections 1"));

    let e1 = callback(&message(0, "U0ASKER1", "Socket question"), "Ev1");
    let e2 = callback(&reply(60, 0, "U0HELPER1", "answer"), "Ev2");
    let e3 = callback(&reply(120, 0, "U0HELPER1", "?resolve"), "Ev3");
    let mut envs = vec![fake.deliver(&e1), fake.deliver(&e2), fake.deliver(&e3)];
    // Slack delivers at least once: the same event in a new envelope.
    envs.push(fake.deliver(&e2));
    // A malformed inner event is acknowledged too (it will never parse better).
    envs.push(fake.deliver(&callback(
        &json!({"type": "message", "channel": HELP, "ts": "nope"}),
        "Ev4",
    )));
    eventually("every ack", || envs.iter().all(|e| fake.acked(e))).await;

    assert_eq!(
        tickets(&app),
        vec![(
            ts(0),
            Status::Closed,
            Some("U0HELPER1".into()),
            Some("U0HELPER1".into()),
            vec![],
            "Socket question".into()
        )]
    );
    assert_eq!(counter(&app, "message", "duplicate"), 1);
    assert_eq!(counter(&app, "message", "rejected"), 1);
    assert_eq!(counter(&app, "message", "applied"), 3);
    assert!(fake.state().pending.is_empty());
    s.shutdown().await;
    assert!(!app.socket_connected.load(Ordering::Relaxed));
}

#[tokio::test]
async fn a_refresh_disconnect_reconnects_without_losing_or_repeating_events() {
    let fake = Fake::start(History::default(), HashMap::new()).await;
    let app = new_app(config());
    let s = socket(&fake, &app, sockets()).await;
    let e1 = callback(&message(0, "U0ASKER1", "Q"), "Ev1");
    let e2 = callback(&reply(60, 0, "U0HELPER1", "first answer"), "Ev2");
    let e3 = callback(&reply(120, 0, "U0ASKER1", "thanks"), "Ev3");
    let a1 = fake.deliver(&e1);
    eventually("ack 1", || fake.acked(&a1)).await;

    // Slack asks for a refresh, then still sends on the old connection, which the
    // client no longer reads: that envelope stays unacknowledged and comes again
    // on the new connection.
    fake.to_latest(WsCmd::Send(
        json!({"type": "disconnect", "reason": "refresh_requested",
               "debug_info": {"host": "applink-fake-1"}})
        .to_string(),
    ));
    let a2 = fake.deliver(&e2);
    eventually("a second connection", || fake.ws_count() == 2).await;
    eventually("ack 2", || fake.acked(&a2)).await;
    // A duplicate delivery of an applied event on the new connection.
    let dup = fake.deliver(&e1);
    let a3 = fake.deliver(&e3);
    eventually("acks 3", || fake.acked(&dup) && fake.acked(&a3)).await;

    let t = app.engine().all_tickets().next().unwrap().clone();
    assert_eq!(app.engine().ticket_count(), 1);
    assert_eq!(t.status, Status::InProgress);
    assert_eq!(t.last_msg_at, Micros::from_slack_ts(&ts(120)).unwrap());
    assert_eq!(counter(&app, "message", "applied"), 3);
    assert_eq!(counter(&app, "message", "duplicate"), 1);
    assert!(app.socket_connected.load(Ordering::Relaxed));
    assert!(app
        .metrics
        .encode()
        .contains("seshat_socket_reconnects_total 1"));
    // One check of the token, then one URL per connection.
    assert_eq!(fake.calls("apps.connections.open").len(), 3);
    s.shutdown().await;
}

#[tokio::test]
async fn a_dropped_socket_is_reported_down_and_reopened_with_nothing_lost() {
    let fake = Fake::start(History::default(), HashMap::new()).await;
    let app = new_app(config());
    let s = socket(&fake, &app, sockets()).await;
    let e1 = callback(&message(0, "U0ASKER1", "Q"), "Ev1");
    let e2 = callback(&reply(60, 0, "U0HELPER1", "answer"), "Ev2");
    let e3 = callback(&reply(120, 0, "U0ASKER1", "thanks"), "Ev3");
    let a1 = fake.deliver(&e1);
    eventually("ack 1", || fake.acked(&a1)).await;

    // The network goes: Slack cannot be reached for a while.
    fake.state().open_failures = 2;
    let a2 = fake.deliver(&e2);
    fake.to_latest(WsCmd::Drop);
    eventually("the drop to be noticed", || {
        !app.socket_connected.load(Ordering::Relaxed)
    })
    .await;
    assert!(app.metrics.encode().contains("seshat_socket_connections 0"));
    eventually("a new connection", || fake.ws_count() == 2).await;
    eventually("connected again", || {
        app.socket_connected.load(Ordering::Relaxed)
    })
    .await;
    // Whether or not the client saw e2 before the drop, it is applied once.
    eventually("ack 2", || fake.acked(&a2)).await;
    let a3 = fake.deliver(&e3);
    eventually("ack 3", || fake.acked(&a3)).await;

    assert_eq!(app.engine().ticket_count(), 1);
    let t = app.engine().all_tickets().next().unwrap().clone();
    assert_eq!(t.status, Status::InProgress);
    assert_eq!(t.last_msg_at, Micros::from_slack_ts(&ts(120)).unwrap());
    assert_eq!(counter(&app, "message", "applied"), 3);
    s.shutdown().await;
}

#[tokio::test]
async fn a_silent_socket_is_reopened_by_the_watchdog() {
    let fake = Fake::start(History::default(), HashMap::new()).await;
    let app = new_app(config());
    let opts = SocketOptions {
        silence_watchdog: Some(Duration::from_millis(800)),
        ..sockets()
    };
    let s = socket(&fake, &app, opts).await;
    // Pings are answered, but no frame comes: the watchdog reopens the connection.
    eventually("a watchdog reconnection", || fake.ws_count() >= 2).await;
    eventually("connected again", || {
        app.socket_connected.load(Ordering::Relaxed)
    })
    .await;
    let a = fake.deliver(&callback(&message(0, "U0ASKER1", "still there?"), "Ev1"));
    eventually("the ack", || fake.acked(&a)).await;
    assert_eq!(app.engine().ticket_count(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn start_up_syncs_the_roster_catches_up_then_keeps_the_roster_fresh() {
    let events = ids(vec![
        message(0, "U0ASKER1", "Before the restart"),
        // while Seshat was down: a helper known only from the team channel answers
        reply(3_600, 0, "U0TEAMMATE", "I can help"),
        message(3_700, "U0ASKER2", "Missed question"),
    ]);
    let all: Vec<Value> = events.iter().map(|(e, _)| e.clone()).collect();
    let members = HashMap::from([(
        TEAM.to_string(),
        vec!["U0TEAMMATE".to_string(), BOT_USER.to_string()],
    )]);
    let fake = Fake::start(History::from_events(&all), members).await;
    let app = new_app(config());
    live(&app, &events[..1]);
    let api = Arc::new(test_api(&fake).await);
    let task = connect::spawn_start_up(
        app.clone(),
        api,
        Some(TEAM.into()),
        Duration::from_millis(200),
        true,
        Micros::from_slack_ts(&ts(4_000)).unwrap(),
    );
    eventually("the catch-up", || app.engine().ticket_count() == 2).await;
    // The roster came first, so the reply counts as a helper's.
    let t = tickets(&app);
    assert_eq!(t[0].1, Status::InProgress);
    assert_eq!(t[0].2.as_deref(), Some("U0TEAMMATE"));
    assert!(app.engine().helpers().contains(&"U0TEAMMATE".to_string()));
    assert!(!app.engine().helpers().contains(&BOT_USER.to_string()));
    // Later membership changes are picked up by the periodic sync.
    fake.state()
        .members
        .get_mut(TEAM)
        .unwrap()
        .push("U0NEWHELP".into());
    eventually("the periodic roster", || {
        app.engine().helpers().contains(&"U0NEWHELP".to_string())
    })
    .await;
    task.abort();
}

/// GET on the real server, through a socket (`Connection: close`): status and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(BOUND, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a full response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// Serves `app` on 127.0.0.1 until the returned sender is dropped.
async fn serve_app(app: &Arc<App>) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(seshat::server::serve(app.clone(), listener, async {
        let _ = rx.await;
    }));
    (addr, tx)
}

#[tokio::test]
async fn start_up_resolves_the_helpers_display_names_for_the_dashboard() {
    let members = HashMap::from([(
        TEAM.to_string(),
        vec!["U0TEAMMATE".to_string(), BOT_USER.to_string()],
    )]);
    let fake = Fake::start(History::default(), members).await;
    {
        let mut st = fake.state();
        for u in [
            // A display name is preferred.
            slack_user("U0HELPER1", "amy", "Amy Pond", "Amy"),
            // No display name (Slack sends ""): the real name.
            slack_user("U0HELPER2", "rory", "Rory Williams", ""),
            // Neither: the username.
            slack_user("U0TEAMMATE", "clara", "", " "),
            slack_user("U0NEWHELP", "river", "River Song", "River"),
        ] {
            st.users.insert(u["id"].as_str().unwrap().to_string(), u);
        }
    }
    let app = new_app(config());
    let (addr, _server) = serve_app(&app).await;
    assert_eq!(http_get(addr, "/api/names").await, (200, "{}".to_string()));
    let api = Arc::new(test_api(&fake).await);
    let task = connect::spawn_start_up(
        app.clone(),
        api,
        Some(TEAM.into()),
        Duration::from_millis(200),
        false,
        Micros::from_slack_ts(&ts(4_000)).unwrap(),
    );
    eventually("the helpers' names", || app.names().len() == 3).await;
    let (status, body) = http_get(addr, "/api/names").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"U0HELPER1": "Amy", "U0HELPER2": "Rory Williams", "U0TEAMMATE": "clara"})
    );
    // A helper who joins later is named after the next roster sync; the others
    // are not asked about again (their names are cached for hours).
    fake.state()
        .members
        .get_mut(TEAM)
        .unwrap()
        .push("U0NEWHELP".into());
    eventually("the new helper's name", || {
        app.names().get("U0NEWHELP").map(String::as_str) == Some("River")
    })
    .await;
    // A few more periodic syncs.
    tokio::time::sleep(Duration::from_millis(600)).await;
    task.abort();
    let asked: Vec<String> = fake
        .calls("users.info")
        .iter()
        .map(|c| c.params["user"].clone())
        .collect();
    let mut once = asked.clone();
    once.sort();
    once.dedup();
    assert_eq!(asked.len(), 4, "each helper asked once: {asked:?}");
    assert_eq!(once, ["U0HELPER1", "U0HELPER2", "U0NEWHELP", "U0TEAMMATE"]);
    assert!(!asked.contains(&BOT_USER.to_string()));
    let (_, body) = http_get(addr, "/api/names").await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["U0NEWHELP"],
        "River"
    );
}

#[tokio::test]
async fn without_users_read_names_stay_ids_and_the_roster_still_syncs() {
    let members = HashMap::from([(TEAM.to_string(), vec!["U0TEAMMATE".to_string()])]);
    let fake = Fake::start(History::default(), members).await;
    {
        let mut st = fake.state();
        st.no_users_read = true;
        let u = slack_user("U0HELPER1", "amy", "Amy Pond", "Amy");
        st.users.insert("U0HELPER1".into(), u);
    }
    let app = new_app(config());
    let api = Arc::new(test_api(&fake).await);
    let task = connect::spawn_start_up(
        app.clone(),
        api,
        Some(TEAM.into()),
        Duration::from_millis(100),
        false,
        Micros::from_slack_ts(&ts(4_000)).unwrap(),
    );
    eventually("a few roster syncs", || {
        fake.calls("conversations.members").len() >= 3
    })
    .await;
    task.abort();
    assert!(app.engine().helpers().contains(&"U0TEAMMATE".to_string()));
    assert!(app.names().is_empty());
    // One refused call per round: the round stops at the missing scope.
    let rounds = fake.calls("users.info").len();
    assert!(
        (1..=fake.calls("conversations.members").len()).contains(&rounds),
        "{rounds} users.info calls"
    );
    // The failure names the scope to add.
    let api = Arc::new(test_api(&fake).await);
    let mut names = connect::HelperNames::new(connect::NAMES_REFRESH);
    let e = names.resolve(&app, &api).await.unwrap_err();
    assert!(e.0.contains("lacks the `users:read` scope"), "{e}");
    // Once the scope is granted, the next round names the helpers.
    fake.state().no_users_read = false;
    assert_eq!(names.resolve(&app, &api).await, Ok(1));
    assert_eq!(
        app.names().get("U0HELPER1").map(String::as_str),
        Some("Amy")
    );
}
