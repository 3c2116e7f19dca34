//! The dashboard in a real headless browser.
//!
//! Starts the real server ([`seshat::server::serve`]) in-process on
//! `127.0.0.1:0` with the demo workspace and two weeks of demo history, then
//! drives Debian's Chromium (`/usr/bin/chromium`) through `chromedriver`
//! (`/usr/bin/chromedriver`) with a tiny hand-written W3C WebDriver client
//! (JSON over plain HTTP/1.1 on `std::net::TcpStream`). It checks that:
//!
//! 1. the page loads and shows exactly the numbers of `/api/stats_v2`;
//! 2. a signed Slack message posted to `/slack/events` reaches the page over
//!    the event stream, without a reload (`tickets-open` grows by one);
//! 3. when the server shuts down, the stream drops and the page says
//!    "disconnected";
//!
//! and takes a screenshot of the live page, written to `docs/dashboard.png`
//! only when `SESHAT_WRITE_SCREENSHOT=1` (so CI never dirties the tree).
//!
//! Without Chromium or chromedriver the test fails when `CI` is set and
//! otherwise prints a loud skip message and passes
//! (`apt-get install -y chromium chromium-driver` enables it).
//!
//! Every wait is a polling loop whose deadline is a failure bound only: no
//! duration is asserted.

#[path = "signing/mod.rs"]
mod signing;
use serde_json::{json, Value};
use seshat::demo::{self, Demo};
use seshat::engine::Engine;
use seshat::server::{serve, App, Clock, Settings};
use seshat::time::{Micros, DAY};
use signing::sign;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const SECRET: &str = "dashboard-test-signing-secret";

/// The `data-raw` ids checked against `/api/stats_v2`, with the answer's field.
const NUMBERS: [(&str, &str, &str); 10] = [
    ("tickets-open", "all_time", "tickets_open"),
    ("tickets-in-progress", "all_time", "tickets_in_progress"),
    ("tickets-closed", "all_time", "tickets_closed"),
    ("tickets-total", "all_time", "tickets_total"),
    ("new-24h", "past_24h", "new_tickets_total"),
    ("new-24h-prev", "past_24h_previous", "new_tickets_total"),
    ("new-7d", "past_7d", "new_tickets_total"),
    ("new-7d-prev", "past_7d_previous", "new_tickets_total"),
    ("closed-24h", "past_24h", "closed_today"),
    ("closed-24h-prev", "past_24h_previous", "closed_today"),
];

/// What the page shows: every `data-raw` of [`NUMBERS`], the leaderboard and the connection state.
const READ_PAGE: &str = r#"
const raw = {};
for (const id of arguments[0]) { const el = document.getElementById(id); raw[id] = el ? el.dataset.raw : null; }
const leaderboard = [...document.querySelectorAll('#leaderboard li')]
  .map((li) => [li.dataset.slackId, li.dataset.count]);
return {
  version: Number(document.body.dataset.version || 0),
  raw,
  leaderboard,
  conn: document.getElementById('conn-status').dataset.state,
  buckets: Number(document.getElementById('chart').dataset.buckets || 0),
};
"#;

/// The leaderboard rows as `[data-slack-id, shown name, id subtitle]`.
const READ_NAMES: &str = r#"
return [...document.querySelectorAll('#leaderboard li')].map((li) => {
  const who = li.querySelector('.who'), sid = who.querySelector('.sid');
  return [li.dataset.slackId, who.firstChild ? who.firstChild.textContent : '', sid ? sid.textContent : null];
});
"#;

#[test]
fn dashboard_in_headless_chromium() {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !std::path::Path::new(p).exists())
        .collect();
    if !missing.is_empty() {
        let msg = format!(
            "dashboard browser test needs {} (apt-get install -y chromium chromium-driver)",
            missing.join(" and ")
        );
        if std::env::var_os("CI").is_some() {
            panic!("{msg}; CI is set, so this is a failure");
        }
        eprintln!(
            "\n{}\n!!! SKIPPED: {msg}\n{}\n",
            "!".repeat(78),
            "!".repeat(78)
        );
        return;
    }
    let started = Instant::now();

    // ------------------------------------------------------------ the server
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let wall = Micros::now();
    let app = Arc::new(App::new(
        Engine::new(demo::config()),
        // Frozen a little ahead of the wall clock: window edges never move during
        // the test (the demo's first ticket sits exactly on the 14-day edge, so a
        // wall clock would race the page against the API), and the live event
        // posted below (real time) still lies before `now`.
        Clock::Fixed(wall.plus(10 * 60 * 1_000_000)),
        Settings {
            signing_secret: Some(SECRET.into()),
            ..Settings::default()
        },
    ));
    for d in Demo::new(wall.plus(-14 * DAY), 42).until(wall) {
        app.ingest(&d).expect("demo history ingests");
    }
    // Display names as a bot token would resolve them (`/api/names`), for
    // every helper but the first, who stays a Slack id.
    let helpers = demo::config().helpers;
    for (i, h) in helpers.iter().enumerate().skip(1) {
        app.set_name(h, &format!("Helper {i}"));
    }
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(serve(app.clone(), listener, async {
        let _ = stopped.await;
    }));

    // ------------------------------------------------------------ the browser
    let profile = tempfile::tempdir().expect("temp dir");
    let driver = Driver::start(profile.path());
    let session = driver.session(profile.path());
    session.navigate(&format!("http://{addr}/"));

    // 1. The first snapshot arrives and matches /api/stats_v2.
    let first = wait_for("the first snapshot (body data-version ≥ 1)", 15, || {
        let p = session.execute(READ_PAGE, json!([ids()]));
        (p["version"].as_u64().unwrap_or(0) >= 1).then_some(p)
    });
    let (status, body) = http(addr, "GET", "/api/stats_v2", &[], b"");
    assert_eq!(
        status,
        200,
        "/api/stats_v2: {}",
        String::from_utf8_lossy(&body)
    );
    let api: Value = serde_json::from_slice(&body).expect("stats_v2 JSON");
    // Nothing changes between the two reads (frozen clock, no live events),
    // but read the page again after the API answered, to compare like with like.
    let page = session.execute(READ_PAGE, json!([ids()]));
    assert!(page["version"].as_u64() >= first["version"].as_u64());
    assert_eq!(
        page["raw"],
        expected_raw(&api),
        "page numbers vs /api/stats_v2"
    );
    assert_eq!(
        page["leaderboard"],
        expected_leaderboard(&api),
        "page leaderboard vs /api/stats_v2 past_7d.helpers_leaderboard"
    );
    let open = api["all_time"]["tickets_open"]
        .as_u64()
        .expect("tickets_open");
    assert!(
        open > 0 && !page["leaderboard"].as_array().unwrap().is_empty(),
        "demo history should leave open tickets and a leaderboard: {page}"
    );
    // Named helpers show their name, with the id beside it; the others their id.
    let expected: Vec<Value> = page["leaderboard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let id = row[0].as_str().unwrap();
            match helpers.iter().position(|h| h == id).filter(|i| *i > 0) {
                Some(i) => json!([id, format!("Helper {i}"), id]),
                None => json!([id, id, null]),
            }
        })
        .collect();
    assert!(
        expected.iter().any(|r| !r[2].is_null()),
        "a named helper in the leaderboard: {expected:?}"
    );
    wait_for("helper names in the leaderboard", 10, || {
        let shown = session.execute(READ_NAMES, json!([]));
        (shown == Value::Array(expected.clone())).then_some(())
    });
    wait_for("the event stream to connect", 10, || {
        let p = session.execute(READ_PAGE, json!([ids()]));
        (p["conn"] == "connected").then_some(())
    });

    // 2. A signed Slack message reaches the page through the stream.
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    let message_ts = format!("{}.{:06}", ts.as_secs(), ts.subsec_micros());
    let event = json!({
        "type": "event_callback",
        "team_id": "T0DEMO",
        "api_app_id": "A0SESHAT",
        "event_id": format!("EvDashboard{}", ts.as_micros()),
        "event_time": ts.as_secs(),
        "event": {
            "type": "message",
            "channel": demo::HELP_CHANNEL,
            "channel_type": "channel",
            "user": "U0BROWSER1",
            "text": "Posted by the dashboard browser test: does the page update live?",
            "ts": message_ts,
            "event_ts": message_ts,
        },
    })
    .to_string();
    let unix = ts.as_secs().to_string();
    let signature = sign(SECRET, &unix, event.as_bytes());
    let posted = Instant::now();
    let (status, body) = http(
        addr,
        "POST",
        "/slack/events",
        &[
            ("Content-Type", "application/json"),
            ("X-Slack-Request-Timestamp", &unix),
            ("X-Slack-Signature", &signature),
        ],
        event.as_bytes(),
    );
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, r#"{"ok":true}"#),
        "signed Slack event"
    );
    let want = (open + 1).to_string();
    wait_for("tickets-open to grow by one without a reload", 10, || {
        let p = session.execute(READ_PAGE, json!([ids()]));
        (p["raw"]["tickets-open"] == want.as_str()).then_some(())
    });
    let live = posted.elapsed();

    // 4. A screenshot of the live page (the chart is drawn by then).
    wait_for("the chart to be drawn", 10, || {
        let p = session.execute(READ_PAGE, json!([ids()]));
        (p["buckets"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    let png = session.screenshot();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "screenshot is not a plausible PNG ({} bytes)",
        png.len()
    );
    if std::env::var("SESHAT_WRITE_SCREENSHOT").as_deref() == Ok("1") {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/dashboard.png");
        std::fs::write(path, &png).unwrap_or_else(|e| panic!("{path}: {e}"));
        eprintln!("wrote {path} ({} bytes)", png.len());
    }

    // 3. Shutting the server down drops the stream; the page notices.
    let _ = stop.send(());
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns after shutdown")
            .expect("serve task")
            .expect("serve result");
    });
    wait_for("#conn-status data-state=disconnected", 10, || {
        let p = session.execute(READ_PAGE, json!([ids()]));
        (p["conn"] == "disconnected").then_some(())
    });
    wait_for("every SSE task to end with the server", 10, || {
        (app.metrics.sse_subscribers.get() == 0).then_some(())
    });

    drop(session);
    drop(driver);
    eprintln!(
        "dashboard test: live update seen {:.0} ms after the POST; total {:.1} s",
        live.as_secs_f64() * 1000.0,
        started.elapsed().as_secs_f64()
    );
}

// ====================================================================== expectations

fn ids() -> Vec<&'static str> {
    NUMBERS.iter().map(|(id, _, _)| *id).collect()
}

/// The `data-raw` each id should carry for this `/api/stats_v2` answer.
fn expected_raw(api: &Value) -> Value {
    NUMBERS
        .iter()
        .map(|(id, window, field)| {
            let n = api[window][field]
                .as_u64()
                .unwrap_or_else(|| panic!("/api/stats_v2 {window}.{field} is not a count"));
            (id.to_string(), Value::String(n.to_string()))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The leaderboard rows (`[data-slack-id, data-count]`) the page should show: the top ten.
fn expected_leaderboard(api: &Value) -> Value {
    let list = api["past_7d"]["helpers_leaderboard"]
        .as_array()
        .expect("past_7d.helpers_leaderboard");
    list.iter()
        .take(10)
        .map(|e| {
            json!([
                e["slack_id"].as_str().expect("slack_id"),
                e["count"].as_u64().expect("count").to_string()
            ])
        })
        .collect()
}

/// Polls `probe` until it yields, failing after `seconds` (a bound, never an expectation).
fn wait_for<T>(what: &str, seconds: u64, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {seconds} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ====================================================================== HTTP/1.1

/// One request on a fresh connection (`Connection: close`): status and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    try_http(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::{Error, ErrorKind};
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::UnexpectedEof,
                "closed before the headers",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, format!("bad head {head:?}")))?;
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let mut body = buf.split_off(head_end);
    match length {
        Some(n) => {
            while body.len() < n {
                let got = s.read(&mut chunk)?;
                if got == 0 {
                    return Err(Error::new(ErrorKind::UnexpectedEof, "body cut short"));
                }
                body.extend_from_slice(&chunk[..got]);
            }
            body.truncate(n);
        }
        None => {
            s.read_to_end(&mut body)?;
        }
    }
    Ok((status, body))
}

// ====================================================================== WebDriver

/// A running chromedriver, killed on drop (also when the test panics).
struct Driver {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Driver {
    fn start(dir: &std::path::Path) -> Driver {
        // A free port: bind, read it, release it for chromedriver.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = dir.join("chromedriver.log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{CHROMEDRIVER}: {e}"));
        let driver = Driver {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        wait_for("chromedriver to be ready", 15, || {
            let (status, body) = try_http(driver.addr, "GET", "/status", &[], b"").ok()?;
            let v: Value = serde_json::from_slice(&body).ok()?;
            (status == 200 && v["value"]["ready"] == true).then_some(())
        });
        driver
    }

    /// A WebDriver command: the answer's `value`, or a panic with WebDriver's error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers: &[(&str, &str)] = if method == "POST" {
            &[("Content-Type", "application/json; charset=utf-8")]
        } else {
            &[]
        };
        let (status, answer) = http(self.addr, method, path, headers, body.as_bytes());
        let v: Value = serde_json::from_slice(&answer).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: HTTP {status}, not JSON ({e}): {}",
                String::from_utf8_lossy(&answer)
            )
        });
        assert_eq!(status, 200, "{method} {path}: {}", v["value"]);
        v["value"].clone()
    }

    fn session(&self, profile: &std::path::Path) -> Session<'_> {
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-quic",
                            "--no-first-run",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            "--window-size=1920,1080",
                            format!("--user-data-dir={}", profile.join("chromium").display()),
                        ],
                    },
                },
            },
        });
        let v = self.call("POST", "/session", Some(caps));
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("new session without an id: {v}"))
            .to_string();
        Session { driver: self, id }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Ok(log) = std::fs::read_to_string(&self.log) {
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- chromedriver log (last lines) ---");
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// A browser session, closed on drop (which also ends Chromium).
struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    fn navigate(&self, url: &str) {
        self.driver.call(
            "POST",
            &format!("/session/{}/url", self.id),
            Some(json!({ "url": url })),
        );
    }

    fn execute(&self, script: &str, args: Value) -> Value {
        self.driver.call(
            "POST",
            &format!("/session/{}/execute/sync", self.id),
            Some(json!({ "script": script, "args": args })),
        )
    }

    fn screenshot(&self) -> Vec<u8> {
        let v = self
            .driver
            .call("GET", &format!("/session/{}/screenshot", self.id), None);
        base64_decode(v.as_str().expect("screenshot is a base64 string"))
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // Best effort, and never a panic (this also runs while a failure unwinds).
        let path = format!("/session/{}", self.id);
        let _ = try_http(self.driver.addr, "DELETE", &path, &[], b"");
    }
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c:#04x}"),
        }
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, c)| acc | (val(*c) << (18 - 6 * i)));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}
