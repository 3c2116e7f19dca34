//! HTTP benchmarks over loopback against the real server (`seshat::server::serve`)
//! holding a 100k-ticket engine on the wall clock: requests per second for
//! `/api/stats_v2` against `/health` over N keep-alive connections, and signed
//! Events API posts per second to `/slack/events`.
//!
//! `cargo bench --bench http` runs the full counts and prints a table on stderr.
//! Without `--bench` (e.g. `cargo test --benches`) it runs a few requests on a
//! 1k-ticket engine, as a smoke test. Every loop is bounded by a request count.

mod common;
#[path = "../tests/signing/mod.rs"]
mod signing;

use serde_json::json;
use seshat::server::{serve, App, Clock, Settings};
use seshat::time::Micros;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "bench-signing-secret";

/// A minimal HTTP/1.1 keep-alive client: one request at a time, bodies framed
/// by `Content-Length` (every route the bench calls answers with one).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    /// Sends one request and reads its whole response: (status, body length).
    async fn call(&mut self, request: &[u8]) -> (u16, usize) {
        self.stream.write_all(request).await.expect("write");
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).expect("ASCII head");
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("content-length");
        while self.buf.len() < head_end + len {
            let n = self.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(self.buf.len(), head_end + len, "no pipelining");
        (status, len)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// Slack's request signature for the bench's secret.
fn sign(ts: &str, body: &[u8]) -> String {
    signing::sign(SECRET, ts, body)
}

fn signed_post(body: &[u8], ts: &str) -> Vec<u8> {
    let mut r = format!(
        "POST /slack/events HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
         X-Slack-Request-Timestamp: {ts}\r\nX-Slack-Signature: {}\r\nContent-Length: {}\r\n\r\n",
        sign(ts, body),
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A message event body as the Events API sends it.
fn message_body(
    event_id: &str,
    ts: &str,
    thread_ts: Option<&str>,
    user: &str,
    text: &str,
) -> Vec<u8> {
    let mut event = json!({
        "type": "message",
        "user": user,
        "text": text,
        "ts": ts,
        "channel": common::CHANNEL,
        "event_ts": ts,
        "channel_type": "channel"
    });
    if let Some(t) = thread_ts {
        event["thread_ts"] = json!(t);
    }
    serde_json::to_vec(&json!({
        "token": "bench",
        "team_id": "T0BENCH",
        "api_app_id": "A0BENCH",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": ts.split('.').next().and_then(|s| s.parse::<i64>().ok()),
    }))
    .expect("JSON")
}

/// `tickets` ticket stories (new question, helper reply, `?resolve`), each story
/// on one connection in order, dealt round-robin over `conns` connections.
fn ticket_posts(tickets: usize, conns: usize, first: usize) -> Vec<Vec<Vec<u8>>> {
    let secs = unix_now();
    let sig_ts = secs.to_string();
    let mut per_conn = vec![Vec::new(); conns];
    for i in 0..tickets {
        let n = first + i;
        // One ts per microsecond of the current second: unique for up to 10^6 / 3 tickets.
        let ts = |k: usize| format!("{secs}.{:06}", (n * 3 + k) % 1_000_000);
        let top = ts(0);
        let opener = format!("UASK{:06}", n % 5000);
        let bodies = [
            message_body(
                &format!("EvHttp{n}a"),
                &top,
                None,
                &opener,
                "The VS Code extension keeps saying `invalid api key`",
            ),
            message_body(
                &format!("EvHttp{n}b"),
                &ts(1),
                Some(&top),
                "UHELPER03",
                "Could you paste the exact error?",
            ),
            message_body(
                &format!("EvHttp{n}c"),
                &ts(2),
                Some(&top),
                "UHELPER03",
                "?resolve",
            ),
        ];
        for b in bodies {
            per_conn[i % conns].push(signed_post(&b, &sig_ts));
        }
    }
    per_conn
}

/// Sends each connection's requests in order, all connections concurrently;
/// returns the connections, the wall time and the number of requests. Every
/// answer must be 200.
async fn run(pool: Vec<Conn>, work: Vec<Vec<Vec<u8>>>) -> (Vec<Conn>, Duration, usize) {
    let total: usize = work.iter().map(Vec::len).sum();
    let started = Instant::now();
    let tasks: Vec<_> = pool
        .into_iter()
        .zip(work)
        .map(|(mut c, reqs)| {
            tokio::spawn(async move {
                for r in &reqs {
                    let (status, _) = c.call(r).await;
                    assert_eq!(status, 200);
                }
                c
            })
        })
        .collect();
    let mut back = Vec::with_capacity(tasks.len());
    for t in tasks {
        back.push(t.await.expect("client task"));
    }
    (back, started.elapsed(), total)
}

fn same(request: &[u8], n: usize, conns: usize) -> Vec<Vec<Vec<u8>>> {
    (0..conns)
        .map(|c| vec![request.to_vec(); n / conns + usize::from(c < n % conns)])
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (tickets, gets, posts, rounds) = if full {
        (100_000u64, 20_000usize, 4_000usize, 3usize)
    } else {
        (1_000, 40, 10, 1)
    };
    let conns = 8;
    let now = Micros::now();
    let started = Instant::now();
    let (engine, applied, _) = common::build(tickets, now);
    eprintln!(
        "built {tickets} tickets from {applied} deliveries in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let settings = Settings {
        signing_secret: Some(SECRET.into()),
        ..Settings::default()
    };
    let app = Arc::new(App::new(engine, Clock::Wall, settings));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(app.clone(), listener, async {
            let _ = stopped.await;
        }));

        let mut pool = Vec::new();
        for _ in 0..conns {
            pool.push(Conn::open(addr).await);
        }

        let stats = get("/api/stats_v2");
        let health = get("/health");
        // Warm-up: first read initializes the windows; then a few of each.
        (pool, _, _) = run(pool, same(&stats, gets / 10 + conns, conns)).await;
        (pool, _, _) = run(pool, same(&health, gets / 10 + conns, conns)).await;

        let (_, stats_bytes) = pool[0].call(&stats).await;
        let (mut stats_rps, mut health_rps, mut post_rps) = (Vec::new(), Vec::new(), Vec::new());
        let mut posted = 0;
        let before = app.engine().ticket_count();
        for _ in 0..rounds {
            let (t, n);
            (pool, t, n) = run(pool, same(&health, gets, conns)).await;
            health_rps.push(n as f64 / t.as_secs_f64());
            let (t, n);
            (pool, t, n) = run(pool, same(&stats, gets, conns)).await;
            stats_rps.push(n as f64 / t.as_secs_f64());
            let work = ticket_posts(posts, conns, posted);
            posted += posts;
            let (t, n);
            (pool, t, n) = run(pool, work).await;
            post_rps.push(n as f64 / t.as_secs_f64());
        }
        let after = app.engine().ticket_count();
        assert_eq!(after - before, posted as u64, "every posted question is a ticket");

        let (s, h, p) = (median(stats_rps), median(health_rps), median(post_rps));
        eprintln!();
        eprintln!(
            "== seshat HTTP summary ({tickets} tickets, {conns} keep-alive connections, \
             median of {rounds} rounds; client and server share one {}-worker runtime) ==",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        eprintln!("GET /health          {h:>10.0} req/s  ({gets} requests per round)");
        eprintln!(
            "GET /api/stats_v2    {s:>10.0} req/s  ({gets} requests per round, {stats_bytes} B bodies)"
        );
        eprintln!("ratio stats_v2/health {:>9.2}", s / h);
        eprintln!(
            "POST /slack/events   {p:>10.0} req/s  ({} signed posts per round: {posts} tickets x new/reply/?resolve)",
            posts * 3
        );
        println!(
            "http tickets={tickets} conns={conns} health_rps={h:.0} stats_v2_rps={s:.0} ratio={:.3} signed_posts_rps={p:.0}",
            s / h
        );

        let _ = stop.send(());
        drop(pool);
        server.await.expect("server task").expect("serve");
    });
}
