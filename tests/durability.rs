//! Durability through the real `seshat` binary: SIGKILL in the middle of a
//! stream of signed posts (many times), graceful shutdown, damaged, missing and
//! misplaced files, and a full disk.
//!
//! Real processes (`CARGO_BIN_EXE_seshat`), real files in temporary
//! directories, real loopback sockets. Every wait is a failure bound only;
//! nothing asserts a duration. Expected states come from a server that never
//! crashed (byte for byte) and from an in-process [`Engine`] fed the same
//! deliveries through [`slack::decode`].
//!
//! The full-disk test mounts a 256 KiB tmpfs, so it needs root; without root,
//! or when `mount` fails, it prints why and passes without checking (CI runs as
//! root).

#[path = "signing/mod.rs"]
mod signing;
use serde_json::{json, Value};
use seshat::engine::{Engine, TicketQuery};
use seshat::model::{Config, Delivery};
use seshat::slack::{self, Body};
use seshat::time::Micros;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_seshat");
const SECRET: &str = "3c9e0d5b7a11f2e4c6d8b0a2f4e6c8d0";
const CHANNELS: [&str; 2] = ["C0HELP0001", "C0HELP0002"];
const HELPERS: [&str; 2] = ["U0HELPER1", "U0HELPER2"];
/// The frozen stats clock of every server (`--now`).
const NOW: &str = "2026-01-01T23:00:00Z";
/// 2026-01-01T00:00:00Z in seconds: streams start here, one event every 20 s.
const T0: i64 = 1_767_225_600;
/// Every wait is bounded by this (a failure bound, not a measurement).
const BOUND: Duration = Duration::from_secs(20);
/// The reads compared between runs.
const READS: [&str; 4] = [
    "/api/stats_v2",
    "/api/tickets?status=open",
    "/api/tickets?status=in_progress",
    "/api/tickets?since=2000-01-01",
];
/// Snapshot and journal header layout (see `src/store.rs`).
const SNAPSHOT_HEADER_LEN: usize = 48;
const JOURNAL_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 12;

// ====================================================================== events

/// splitmix64: a small deterministic generator for streams and kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One Events API delivery as Slack would POST it.
#[derive(Clone)]
struct Ev {
    id: String,
    body: Vec<u8>,
}

impl Ev {
    fn delivery(&self) -> Delivery {
        match slack::decode(&self.body) {
            Ok(Body::Event(d)) => d,
            other => panic!("{}: not an applicable event: {other:?}", self.id),
        }
    }
}

fn envelope(id: &str, secs: i64, event: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "token": "Zq8vW2xNcR4tY6uB0mK3pL7s",
        "team_id": "T0SUPPORT1",
        "api_app_id": "A0SESHAT01",
        "event": event,
        "type": "event_callback",
        "event_id": id,
        "event_time": secs,
        "authorizations": [{
            "enterprise_id": null,
            "team_id": "T0SUPPORT1",
            "user_id": "U0SESHATB",
            "is_bot": true,
            "is_enterprise_install": false
        }],
        "is_ext_shared_channel": false
    }))
    .expect("JSON")
}

fn message(channel: &str, ts: &str, thread: Option<(&str, &str)>, user: &str, text: &str) -> Value {
    let mut m = json!({
        "type": "message",
        "user": user,
        "text": text,
        "ts": ts,
        "team": "T0SUPPORT1",
        "channel": channel,
        "event_ts": ts,
        "channel_type": "channel"
    });
    if let Some((thread_ts, parent)) = thread {
        m["thread_ts"] = json!(thread_ts);
        m["parent_user_id"] = json!(parent);
    }
    m
}

fn reaction(
    added: bool,
    user: &str,
    channel: &str,
    item_ts: &str,
    opener: &str,
    ts: &str,
) -> Value {
    json!({
        "type": if added { "reaction_added" } else { "reaction_removed" },
        "user": user,
        "reaction": "white_check_mark",
        "item": {"type": "message", "channel": channel, "ts": item_ts},
        "item_user": opener,
        "event_ts": ts
    })
}

/// A deterministic stream of `n` deliveries: new tickets, helper and opener
/// replies, `?resolve` and `?reopen` macros, ✅ added and removed, deleted
/// tickets, and redeliveries of earlier events (same `event_id`, same body).
/// Event `k` happens at `T0 + 20 s·k`, so any stream stays well inside the
/// one-day dedupe horizon.
fn stream(seed: u64, n: usize) -> Vec<Ev> {
    let mut rng = Rng(seed);
    let mut out: Vec<Ev> = Vec::with_capacity(n);
    // Live tickets: (channel, ts, opener).
    let mut live: Vec<(&str, String, String)> = Vec::new();
    for k in 0..n {
        let secs = T0 + 20 * k as i64;
        let ts = format!("{secs}.{:06}", 100 + k);
        let id = format!("Ev{seed:02X}K{k:05}");
        let roll = rng.below(100);
        let helper = HELPERS[rng.below(2) as usize];
        if k > 10 && roll < 3 {
            let again = out[rng.below(k as u64) as usize].clone();
            out.push(again);
            continue;
        }
        let event = if live.is_empty() || roll < 30 {
            let channel = CHANNELS[rng.below(2) as usize];
            let opener = format!("U0USER{:03}", rng.below(40));
            let text = format!(
                "Question {k}: my build fails with error E{} after updating, any ideas?",
                rng.below(100)
            );
            live.push((channel, ts.clone(), opener.clone()));
            message(channel, &ts, None, &opener, &text)
        } else {
            let t = rng.below(live.len() as u64) as usize;
            let (channel, tts, opener) = live[t].clone();
            let thread = Some((tts.as_str(), opener.as_str()));
            match roll {
                30..=52 => message(
                    channel,
                    &ts,
                    thread,
                    helper,
                    "Have you tried a clean build?",
                ),
                53..=62 => message(channel, &ts, thread, &opener, "Still failing, sorry."),
                63..=71 => message(channel, &ts, thread, helper, "?resolve"),
                72..=80 => reaction(true, helper, channel, &tts, &opener, &ts),
                81..=86 => reaction(false, helper, channel, &tts, &opener, &ts),
                87..=92 => message(channel, &ts, thread, helper, "?reopen"),
                _ => {
                    live.swap_remove(t);
                    json!({
                        "type": "message",
                        "subtype": "message_deleted",
                        "hidden": true,
                        "deleted_ts": tts,
                        "channel": channel,
                        "event_ts": ts,
                        "ts": ts,
                        "channel_type": "channel"
                    })
                }
            }
        };
        let ev = Ev {
            body: envelope(&id, secs, event),
            id,
        };
        ev.delivery(); // every generated body must decode to an applicable event
        out.push(ev);
    }
    out
}

/// The engine configuration `seshat serve` builds from the environment below.
fn config() -> Config {
    Config {
        help_channels: CHANNELS.map(String::from).to_vec(),
        helpers: HELPERS.map(String::from).to_vec(),
        ..Config::default()
    }
}

/// `/api/stats_v2` and `/api/tickets?since=2000-01-01` of an engine fed `evs`
/// in order, exactly as the server serializes them.
fn expected(evs: &[Ev]) -> [String; 2] {
    let mut e = Engine::new(config());
    for ev in evs {
        e.apply(&ev.delivery());
    }
    let now = Micros::parse_iso(NOW).expect("NOW");
    let stats = serde_json::to_string(&e.stats_v2(now, 0)).expect("JSON");
    e.advance(now);
    let query = TicketQuery {
        status: None,
        since: Some(Micros::parse_iso("2000-01-01").expect("date")),
        until: None,
    };
    let tickets = serde_json::to_string(&e.tickets(query, 0)).expect("JSON");
    [stats, tickets]
}

/// The events of `evs` a server journals: the first delivery of each `event_id`.
fn first_deliveries(evs: &[Ev]) -> Vec<Ev> {
    let mut seen = HashSet::new();
    evs.iter()
        .filter(|e| seen.insert(e.id.clone()))
        .cloned()
        .collect()
}

// ====================================================================== HTTP

#[derive(Debug)]
struct Resp {
    status: u16,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(BOUND))?;
    s.set_write_timeout(Some(BOUND))?;
    Ok(s)
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

fn incomplete(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what.to_string())
}

/// Reads a whole `Connection: close` response; an error if it is cut short.
fn read_response(mut s: TcpStream) -> io::Result<Resp> {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| incomplete("incomplete response head"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| incomplete("bad status line"))?;
    let (mut len, mut chunked) = (None, false);
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                _ => {}
            }
        }
    }
    let mut rest = &raw[end + 4..];
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| incomplete("incomplete chunk"))?;
            let size_field = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_field.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| incomplete("bad chunk size"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break body;
            }
            if rest.len() < size + 2 {
                return Err(incomplete("incomplete chunk"));
            }
            body.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    } else if let Some(n) = len {
        if rest.len() < n {
            return Err(incomplete("incomplete body"));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Resp { status, body })
}

fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> io::Result<Resp> {
    let mut s = connect(addr)?;
    s.write_all(&request_bytes(method, path, headers, body))?;
    read_response(s)
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    try_request(addr, "GET", path, &[], b"").unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// Slack's headers for `body`, signed now: `v0=` + hex HMAC-SHA256 of `v0:{ts}:{body}`.
fn signed_headers(body: &[u8]) -> Vec<(&'static str, String)> {
    let ts = unix_now().to_string();
    let signature = signing::sign(SECRET, &ts, body);
    vec![
        ("Content-Type", "application/json".to_string()),
        ("X-Slack-Request-Timestamp", ts),
        ("X-Slack-Signature", signature),
    ]
}

fn try_post(addr: SocketAddr, ev: &Ev) -> io::Result<Resp> {
    try_request(
        addr,
        "POST",
        "/slack/events",
        &signed_headers(&ev.body),
        &ev.body,
    )
}

/// Posts and expects an acknowledgement.
fn post(addr: SocketAddr, ev: &Ev) {
    let r = try_post(addr, ev).unwrap_or_else(|e| panic!("POST {}: {e}", ev.id));
    assert_eq!(r.status, 200, "POST {}: {}", ev.id, r.text());
}

// ====================================================================== processes

/// Removes ANSI colour sequences (tracing colours stderr even into a file).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn read_log(path: &Path) -> String {
    strip_ansi(&fs::read_to_string(path).unwrap_or_default())
}

/// A fresh log file name in `dir`.
fn log_path(dir: &Path, stem: &str) -> PathBuf {
    (1..)
        .map(|n| dir.join(format!("{stem}-{n}.log")))
        .find(|p| !p.exists())
        .expect("a free name")
}

/// `seshat <args>` with a clean environment: the signing secret, both help
/// channels, two helpers, and `env` on top.
fn seshat(data_dir: Option<&Path>, env: &[(String, String)]) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("SLACK_SIGNING_SECRET", SECRET)
        .env("SLACK_HELP_CHANNEL", CHANNELS.join(","))
        .env("HELPERS", HELPERS.join(","))
        .stdin(Stdio::null());
    if let Some(d) = data_dir {
        c.env("DATA_DIR", d);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Waits (bounded) for a child to exit.
fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a command that must end by itself: its status, stdout and stderr.
fn run(mut cmd: Command, logs: &Path, what: &str) -> (ExitStatus, String, String) {
    let out = log_path(logs, "out");
    let err = log_path(logs, "err");
    let mut child = cmd
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn seshat");
    let status = wait_exit(&mut child, what);
    (status, read_log(&out), read_log(&err))
}

/// `seshat snapshot verify --data-dir <dir>`.
fn verify(dir: &Path, logs: &Path) -> (ExitStatus, String) {
    let mut c = seshat(None, &[]);
    c.args(["snapshot", "verify", "--data-dir"]).arg(dir);
    let (status, out, err) = run(c, logs, "snapshot verify");
    (status, out + &err)
}

/// Polls until `ok()` holds, for at most [`BOUND`].
fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `seshat serve`, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port: bind port 0, note it, release it.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
}

impl Server {
    /// Starts `seshat serve` and waits until `/health` answers.
    fn start(logs: &Path, data_dir: Option<&Path>, env: &[(String, String)]) -> Server {
        for _attempt in 0..3 {
            let addr = free_addr();
            let log = log_path(logs, "serve");
            let mut cmd = seshat(data_dir, env);
            cmd.args(["serve", "--listen", &addr.to_string(), "--now", NOW])
                .stdout(Stdio::null())
                .stderr(File::create(&log).expect("log file"));
            let mut server = Server {
                child: cmd.spawn().expect("spawn seshat serve"),
                addr,
                log,
            };
            let deadline = Instant::now() + BOUND;
            loop {
                if let Some(status) = server.child.try_wait().expect("try_wait") {
                    let log = server.log();
                    if log.contains("cannot listen on") {
                        break; // another process took the port meanwhile: try another
                    }
                    panic!("seshat serve exited ({status}) before serving:\n{log}");
                }
                if try_request(addr, "GET", "/health", &[], b"").is_ok_and(|r| r.status == 200) {
                    return server;
                }
                assert!(
                    Instant::now() < deadline,
                    "seshat serve not ready within {BOUND:?}:\n{}",
                    server.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("no free port after three attempts");
    }

    fn log(&self) -> String {
        read_log(&self.log)
    }

    /// SIGKILL (what `Child::kill` sends on unix) and reap.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// SIGTERM through kill(1), then a bounded wait for the exit.
    fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill(1)");
        assert!(sent.success(), "kill -TERM failed");
        wait_exit(&mut self.child, "seshat serve after SIGTERM")
    }

    /// The [`READS`], each a 200.
    fn reads(&self) -> Vec<String> {
        READS
            .iter()
            .map(|p| {
                let r = get(self.addr, p);
                assert_eq!(r.status, 200, "GET {p}: {}", r.text());
                r.text()
            })
            .collect()
    }

    /// What [`expected`] computes: stats_v2 and every ticket.
    fn state(&self) -> [String; 2] {
        [READS[0], READS[3]].map(|p| {
            let r = get(self.addr, p);
            assert_eq!(r.status, 200, "GET {p}: {}", r.text());
            r.text()
        })
    }
}

fn journal_file(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal-{generation:010}.log"))
}

/// Offsets and payload lengths of a journal file's records.
fn records(path: &Path) -> Vec<(usize, usize)> {
    let b = fs::read(path).expect("read journal");
    let mut off = JOURNAL_HEADER_LEN;
    let mut out = Vec::new();
    while off + RECORD_HEADER_LEN <= b.len() {
        let len = u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes")) as usize;
        out.push((off, len));
        off += RECORD_HEADER_LEN + len;
    }
    out
}

fn flip_byte(path: &Path, at: usize) {
    let mut b = fs::read(path).expect("read");
    b[at] ^= 0x40;
    fs::write(path, b).expect("write");
}

/// Sets a header's version field (bytes 8..12) and recomputes the header CRC
/// over the bytes before `crc_at`, so the file reads as a newer format, not as
/// a damaged one.
fn set_version(path: &Path, version: u32, crc_at: usize) {
    let mut b = fs::read(path).expect("read");
    b[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&b[..crc_at]);
    b[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    fs::write(path, b).expect("write");
}

/// No periodic snapshot during a test (only the one at graceful shutdown).
fn no_periodic_snapshots() -> Vec<(String, String)> {
    env(&[
        ("SNAPSHOT_EVERY_EVENTS", "1000000"),
        ("SNAPSHOT_EVERY_SECS", "100000"),
    ])
}

// ====================================================================== SIGKILL

/// Snapshots a server's log reports (the store's line, with its generation).
fn snapshots_written(log: &Path) -> usize {
    read_log(log)
        .lines()
        .filter(|l| l.contains("snapshot written") && l.contains("generation="))
        .count()
}

/// Posts `events` one at a time; at 5–8 pseudo-random points SIGKILLs the
/// server with a post in flight (half sent, just sent, sent a moment ago, or
/// just acknowledged), checks the data directory, restarts on it, checks the
/// state holds every acknowledged event (and at most the one in flight), and
/// re-sends the event if it was not acknowledged, as Slack would. At the end
/// the reads equal those of a server that never crashed, byte for byte.
fn kill_nine_many_times(seed: u64, n: usize, policy: &[(&str, &str)]) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let events = stream(seed, n);
    let mut settings = env(&[
        ("SNAPSHOT_EVERY_EVENTS", "25"),
        ("SNAPSHOT_EVERY_SECS", "1"),
    ]);
    settings.extend(env(policy));

    // The run that never crashes, on its own data directory, posted beside this
    // one. The test thread owns the process, so a failure here still kills it.
    let reference = Server::start(tmp.path(), Some(&tmp.path().join("reference")), &settings);
    let reference_posts = {
        let (addr, events) = (reference.addr, events.clone());
        std::thread::spawn(move || events.iter().for_each(|ev| post(addr, ev)))
    };

    // Segments of 0.2–1.7 s of back-to-back posts (each at most n/(kills+1)
    // events, so every kill happens): long enough that the once-a-second
    // snapshot task often runs while an ingest is in flight.
    let mut rng = Rng(seed ^ 0xD1CE);
    let kills = 5 + rng.below(4) as usize;
    let quota = n / (kills + 1);
    let segment = |rng: &mut Rng| Duration::from_millis(200 + rng.below(1500));

    let mut server = Server::start(tmp.path(), Some(&data), &settings);
    let mut logs = vec![server.log.clone()];
    let (mut seg_start, mut seg_len, mut seg_from) = (Instant::now(), segment(&mut rng), 0);
    let mut long_segments = 0;
    let mut i = 0;
    let mut done = 0;
    while i < n {
        let due = done < kills
            && i > seg_from
            && (seg_start.elapsed() >= seg_len || i - seg_from >= quota);
        if !due {
            post(server.addr, &events[i]);
            i += 1;
            continue;
        }
        done += 1;
        if seg_start.elapsed() > Duration::from_secs(1) {
            long_segments += 1;
        }
        // Event i is in flight when the SIGKILL lands.
        let ev = &events[i];
        let request = request_bytes("POST", "/slack/events", &signed_headers(&ev.body), &ev.body);
        let mut s = connect(server.addr).expect("connect");
        let mode = rng.below(4);
        let acked = match mode {
            0 => {
                s.write_all(&request[..request.len() - ev.body.len() / 2])
                    .expect("write half");
                server.kill();
                false
            }
            3 => {
                s.write_all(&request).expect("write");
                let r = read_response(s).expect("response");
                assert_eq!(r.status, 200, "{}: {}", ev.id, r.text());
                server.kill();
                true
            }
            _ => {
                s.write_all(&request).expect("write");
                if mode == 2 {
                    std::thread::sleep(Duration::from_micros(rng.below(3000)));
                }
                server.kill();
                read_response(s).is_ok_and(|r| r.status == 200)
            }
        };
        let (status, report) = verify(&data, tmp.path());
        assert!(
            status.success(),
            "after SIGKILL #{done} (event {i}, mode {mode}) verify reports problems:\n{report}"
        );
        server = Server::start(tmp.path(), Some(&data), &settings);
        logs.push(server.log.clone());
        (seg_start, seg_len, seg_from) = (Instant::now(), segment(&mut rng), i);
        let state = server.state();
        let with = expected(&events[..=i]);
        if acked {
            assert!(
                state == with,
                "restart #{done}: event {i} ({}) was acknowledged but the state differs\nserver:   {}\nexpected: {}",
                ev.id, state[0], with[0]
            );
            i += 1;
        } else {
            let without = expected(&events[..i]);
            assert!(
                state == without || state == with,
                "restart #{done}: the state is neither the {i} acknowledged events nor those plus the one in flight\nserver:  {}\nwithout: {}\nwith:    {}",
                state[0], without[0], with[0]
            );
            // Not acknowledged: Slack delivers it again (same event_id), next loop.
        }
    }
    assert_eq!(done, kills, "every planned SIGKILL happened");
    let crashed = server.reads();
    reference_posts.join().expect("reference run");
    let reference = reference.reads();
    for (k, path) in READS.iter().enumerate() {
        assert!(
            crashed[k] == reference[k],
            "GET {path} after {kills} SIGKILLs differs from the run that never crashed\ncrashed:   {}\nreference: {}",
            crashed[k],
            reference[k]
        );
    }
    assert_eq!(server.state(), expected(&events), "in-process engine");

    // Snapshots and rotations did happen during the run.
    let snapshots: usize = logs.iter().map(|l| snapshots_written(l)).sum();
    eprintln!(
        "seed {seed}: {kills} SIGKILLs, {snapshots} snapshots, {long_segments} segments over a second"
    );
    assert!(snapshots > 0, "no snapshot was written during the run");
    assert!(
        journal_file(&data, 2).exists() || !journal_file(&data, 1).exists(),
        "the journal never rotated past generation 1"
    );

    // And a graceful stop after all that leaves nothing to replay.
    let status = server.terminate();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        server.log()
    );
    let (status, report) = verify(&data, tmp.path());
    assert!(status.success(), "{report}");
    assert!(report.contains("replay 0 journal records"), "{report}");
}

#[test]
fn sigkill_mid_stream_many_times_loses_no_acknowledged_event() {
    kill_nine_many_times(0x5E, 3500, &[("JOURNAL_GROUP_COMMIT_MS", "0")]);
}

/// Group commit acknowledges before the fsync, but a process crash (unlike a
/// power loss) leaves the kernel's page cache, so SIGKILL loses nothing either.
#[test]
fn sigkill_under_group_commit_loses_no_acknowledged_event() {
    kill_nine_many_times(0xA7, 3000, &[("JOURNAL_GROUP_COMMIT_MS", "20")]);
}

// ====================================================================== SIGTERM

#[test]
fn sigterm_writes_a_snapshot_and_the_next_start_replays_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let settings = no_periodic_snapshots();
    let events = stream(0x7E, 80);
    let mut server = Server::start(tmp.path(), Some(&data), &settings);
    for ev in &events {
        post(server.addr, ev);
    }
    let before = server.reads();
    assert_eq!(server.state(), expected(&events));
    let status = server.terminate();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        server.log()
    );
    let log = server.log();
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("snapshot written"), "{log}");

    let (status, report) = verify(&data, tmp.path());
    assert!(status.success(), "{report}");
    assert!(
        report.contains("start-up would load snapshot.bin and replay 0 journal records"),
        "{report}"
    );
    let mut inspect = seshat(None, &[]);
    inspect
        .args(["snapshot", "inspect"])
        .arg(data.join("snapshot.bin"));
    let (status, out, err) = run(inspect, tmp.path(), "snapshot inspect");
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("kind:             snapshot, format version 1"),
        "{out}"
    );
    let seen = format!("seen event ids:   {}", first_deliveries(&events).len());
    assert!(out.contains(&seen), "{out}");

    let server = Server::start(tmp.path(), Some(&data), &settings);
    let log = server.log();
    assert!(log.contains("replayed=0"), "{log}");
    assert_eq!(server.reads(), before);
}

// ====================================================================== damaged files

/// A data directory with the first deliveries of `events` in journal 1 and no
/// snapshot (the server was SIGKILLed).
fn journal_only(tmp: &Path, events: &[Ev]) -> PathBuf {
    let data = tmp.join("data");
    let mut server = Server::start(tmp, Some(&data), &no_periodic_snapshots());
    for ev in events {
        post(server.addr, ev);
    }
    server.kill();
    let journal = journal_file(&data, 1);
    assert_eq!(
        records(&journal).len(),
        first_deliveries(events).len(),
        "one record per first delivery"
    );
    data
}

#[test]
fn truncated_journal_tail_is_cut_with_a_warning() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let events = first_deliveries(&stream(0x31, 60));
    let data = journal_only(tmp.path(), &events);
    let journal = journal_file(&data, 1);
    let (off, len) = *records(&journal).last().expect("records");
    // The last record cut in half, as a crash mid-write leaves it.
    let cut = off + (RECORD_HEADER_LEN + len) / 2;
    OpenOptions::new()
        .write(true)
        .open(&journal)
        .and_then(|f| f.set_len(cut as u64))
        .expect("truncate");

    let server = Server::start(tmp.path(), Some(&data), &no_periodic_snapshots());
    let log = server.log();
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("torn or damaged last record"), "{log}");
    let last = events.len() - 1;
    assert_eq!(server.state(), expected(&events[..last]));
    assert_eq!(fs::metadata(&journal).expect("journal").len(), off as u64);
    // Slack redelivers the unacknowledged event; it lands after the cut.
    post(server.addr, &events[last]);
    assert_eq!(server.state(), expected(&events));
}

#[test]
fn bit_flipped_journal_tail_is_cut_and_a_flip_inside_stops_replay_there() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let events = first_deliveries(&stream(0x32, 60));

    // In the last record: indistinguishable from a torn write, cut with a warning.
    let tail = tmp.path().join("tail");
    fs::create_dir(&tail).expect("mkdir");
    let data = journal_only(&tail, &events);
    let journal = journal_file(&data, 1);
    let (off, len) = *records(&journal).last().expect("records");
    flip_byte(&journal, off + RECORD_HEADER_LEN + len / 2);
    let server = Server::start(&tail, Some(&data), &no_periodic_snapshots());
    let log = server.log();
    assert!(log.contains("torn or damaged last record"), "{log}");
    assert_eq!(server.state(), expected(&events[..events.len() - 1]));
    drop(server);

    // In the middle: corruption. Replay stops before it, says so loudly, keeps
    // the whole file aside, and serves what came before.
    let mid = tmp.path().join("mid");
    fs::create_dir(&mid).expect("mkdir");
    let data = journal_only(&mid, &events);
    let journal = journal_file(&data, 1);
    let recs = records(&journal);
    let k = recs.len() / 2;
    let (off, len) = recs[k];
    flip_byte(&journal, off + RECORD_HEADER_LEN + len / 2);
    let server = Server::start(&mid, Some(&data), &no_periodic_snapshots());
    let log = server.log();
    assert!(log.contains("ERROR"), "{log}");
    assert!(log.contains("STOPPED"), "{log}");
    assert!(data.join("journal-0000000001.corrupt-1").exists());
    assert_eq!(server.state(), expected(&events[..k]));
}

#[test]
fn bit_flipped_snapshot_falls_back_to_the_previous_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let settings = env(&[
        ("SNAPSHOT_EVERY_EVENTS", "10"),
        ("SNAPSHOT_EVERY_SECS", "1"),
    ]);
    let events = stream(0x5A, 90);
    let mut server = Server::start(tmp.path(), Some(&data), &settings);
    let cur = data.join("snapshot.bin");
    let prev = data.join("snapshot.prev.bin");
    for ev in &events[..30] {
        post(server.addr, ev);
    }
    wait_until("a first snapshot", || cur.exists());
    for ev in &events[30..60] {
        post(server.addr, ev);
    }
    wait_until("a second snapshot", || prev.exists());
    for ev in &events[60..] {
        post(server.addr, ev);
    }
    let before = server.reads();
    server.kill();

    let len = fs::metadata(&cur).expect("snapshot.bin").len() as usize;
    flip_byte(&cur, SNAPSHOT_HEADER_LEN + (len - SNAPSHOT_HEADER_LEN) / 2);
    let (status, report) = verify(&data, tmp.path());
    assert!(!status.success(), "{report}");
    assert!(report.contains("snapshot.bin: PROBLEM"), "{report}");
    assert!(
        report.contains("note: start-up would fall back to snapshot.prev.bin"),
        "{report}"
    );

    let server = Server::start(tmp.path(), Some(&data), &settings);
    let log = server.log();
    assert!(log.contains("falling back to snapshot.prev.bin"), "{log}");
    assert!(data.join("snapshot.corrupt-1.bin").exists());
    assert_eq!(server.reads(), before);
    assert_eq!(server.state(), expected(&events));
}

#[test]
fn unknown_format_version_refuses_to_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let events = stream(0x0F, 20);
    let mut server = Server::start(tmp.path(), Some(&data), &no_periodic_snapshots());
    for ev in &events {
        post(server.addr, ev);
    }
    assert!(server.terminate().success());
    let snapshot = data.join("snapshot.bin");

    // A snapshot from a future release.
    set_version(&snapshot, 2, 44);
    let patched = fs::read(&snapshot).expect("read");
    let mut serve = seshat(Some(&data), &[]);
    serve.args(["serve", "--listen", &free_addr().to_string(), "--now", NOW]);
    let (status, _, err) = run(serve, tmp.path(), "seshat serve with a version-2 snapshot");
    assert!(!status.success(), "started anyway:\n{err}");
    for needle in [
        "snapshot.bin has snapshot format version 2",
        "this seshat reads version 1",
        "run the seshat release that wrote it",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert_eq!(
        fs::read(&snapshot).expect("read"),
        patched,
        "the file was changed"
    );
    let (status, report) = verify(&data, tmp.path());
    assert!(!status.success(), "{report}");
    assert!(report.contains("format version 2"), "{report}");
    assert!(
        report
            .contains("start-up would REFUSE to start: snapshot.bin has an unknown format version"),
        "{report}"
    );
    assert!(!report.contains("fall back"), "{report}");

    // A journal from a future release.
    set_version(&snapshot, 1, 44);
    let journal = fs::read_dir(&data)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .expect("a journal");
    set_version(&journal, 7, 20);
    let mut serve = seshat(Some(&data), &[]);
    serve.args(["serve", "--listen", &free_addr().to_string(), "--now", NOW]);
    let (status, _, err) = run(serve, tmp.path(), "seshat serve with a version-7 journal");
    assert!(!status.success(), "started anyway:\n{err}");
    assert!(err.contains("journal format version 7"), "{err}");
}

#[test]
fn empty_or_missing_data_dir_starts_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let events = stream(0x11, 5);
    for data in [tmp.path().join("empty"), tmp.path().join("missing/deeper")] {
        if data.ends_with("empty") {
            fs::create_dir(&data).expect("mkdir");
        }
        let server = Server::start(tmp.path(), Some(&data), &no_periodic_snapshots());
        let log = server.log();
        assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
        assert_eq!(server.state(), expected(&[]));
        assert_eq!(get(server.addr, "/api/tickets?status=open").text(), "[]");
        post(server.addr, &events[0]);
        assert_eq!(server.state(), expected(&events[..1]));
        assert!(journal_file(&data, 1).exists());
    }
}

#[test]
fn data_dir_under_a_regular_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("not-a-dir");
    fs::write(&file, b"just a file").expect("write");
    let data = file.join("data");
    let mut serve = seshat(Some(&data), &[]);
    serve.args(["serve", "--listen", &free_addr().to_string(), "--now", NOW]);
    let (status, _, err) = run(serve, tmp.path(), "seshat serve under a file");
    assert!(!status.success(), "started anyway:\n{err}");
    assert!(err.contains(&data.display().to_string()), "{err}");
    assert!(err.contains("Not a directory"), "{err}");
    assert_eq!(fs::read(&file).expect("read"), b"just a file");
}

// ====================================================================== full disk

/// Unmounts when dropped (declared before the server, so dropped after it).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Mounts a 256 KiB tmpfs at `dir` (with `extra` options), or says why it cannot.
fn small_tmpfs(dir: &Path, extra: &str) -> Result<Mount, String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .map_err(|e| format!("cannot run id -u: {e}"))?;
    if uid != "0" {
        return Err(format!("not running as root (uid {uid})"));
    }
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size=256k{extra}"), "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Mount(dir.to_path_buf()))
}

#[test]
fn full_disk_answers_503_stays_up_and_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = tmp.path().join("mnt");
    let _mount = match small_tmpfs(&mnt, "") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("full_disk test skipped: {why}");
            return;
        }
    };
    let data = mnt.join("data");
    let settings = no_periodic_snapshots();
    let events = first_deliveries(&stream(0xFD, 120));
    let mut server = Server::start(tmp.path(), Some(&data), &settings);
    let mut acked: Vec<Ev> = Vec::new();
    for ev in &events[..10] {
        post(server.addr, ev);
        acked.push(ev.clone());
    }

    // Fill the file system.
    let filler = mnt.join("filler");
    let mut f = File::create(&filler).expect("filler");
    let page = [0xAAu8; 4096];
    while f.write_all(&page).and_then(|()| f.sync_all()).is_ok() {}
    drop(f);

    // Posts until the journal runs out of room: each one is acknowledged or a
    // 503 (then Slack retries), nothing else.
    let mut refused = None;
    for (i, ev) in events.iter().enumerate().skip(10) {
        let r = try_post(server.addr, ev).expect("the server answers");
        match r.status {
            200 => acked.push(ev.clone()),
            503 => {
                assert!(r.text().contains("journal_unavailable"), "{}", r.text());
                refused = Some(i);
                break;
            }
            s => panic!("POST {} on a full disk: {s} {}", ev.id, r.text()),
        }
    }
    let refused = refused.expect("a full disk never refused a post");
    assert!(
        try_request(server.addr, "GET", "/health", &[], b"").is_ok_and(|r| r.status == 200),
        "the server went down"
    );
    assert_eq!(server.state(), expected(&acked), "state after the refusal");
    let log = server.log();
    assert!(
        log.contains("journal write failed; not acknowledging"),
        "{log}"
    );

    // Space comes back: Slack's retry is accepted, the stream goes on.
    fs::remove_file(&filler).expect("rm filler");
    for ev in &events[refused..refused + 10] {
        post(server.addr, ev);
        acked.push(ev.clone());
    }
    assert_eq!(server.state(), expected(&acked));

    // And everything acknowledged is on disk.
    server.kill();
    let server = Server::start(tmp.path(), Some(&data), &settings);
    assert_eq!(server.state(), expected(&acked), "after a restart");
}

/// Root ignores permission bits, so a read-only data directory is a read-only mount.
#[test]
fn read_only_data_dir_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = tmp.path().join("ro");
    let _mount = match small_tmpfs(&mnt, ",ro") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("read-only test skipped: {why}");
            return;
        }
    };
    for data in [mnt.clone(), mnt.join("data")] {
        let mut serve = seshat(Some(&data), &[]);
        serve.args(["serve", "--listen", &free_addr().to_string(), "--now", NOW]);
        let (status, _, err) = run(serve, tmp.path(), "seshat serve on a read-only mount");
        assert!(!status.success(), "started anyway:\n{err}");
        assert!(
            err.contains(&format!(
                "data directory {} is not writable",
                data.display()
            )),
            "{err}"
        );
        assert!(
            err.contains("set DATA_DIR to a writable directory"),
            "{err}"
        );
    }
}
