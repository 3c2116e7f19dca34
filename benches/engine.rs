//! Engine benchmarks: apply throughput, `stats_v2` read cost against the ticket
//! count, narrow ticket listings, and memory per ticket.
//!
//! `cargo bench --bench engine` runs everything at 1k / 100k / 1M tickets and
//! prints a summary table on stderr. Without `--bench` (e.g. `cargo test
//! --benches`) criterion runs each routine once and only the 1k engine is built.

mod common;

use criterion::{BenchmarkId, Criterion, Throughput};
use seshat::engine::{Engine, TicketQuery};
use seshat::model::Delivery;
use seshat::time::{Micros, DAY};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

// ------------------------------------------------------------ counting allocator

/// `System`, counting live heap bytes while [`COUNTING`] is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() && COUNTING.load(Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() && COUNTING.load(Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        if COUNTING.load(Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() && COUNTING.load(Relaxed) {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ------------------------------------------------------------ bookkeeping

/// Per-sample (nanoseconds, iterations), by name, for the summary table.
#[derive(Default)]
struct Record(RefCell<BTreeMap<String, Vec<(f64, u64)>>>);

/// Criterion's sample count (its warm-up calls come first and are left out).
const SAMPLES: usize = 10;

impl Record {
    fn add(&self, name: &str, elapsed: Duration, iters: u64) -> Duration {
        self.0
            .borrow_mut()
            .entry(name.to_string())
            .or_default()
            .push((elapsed.as_nanos() as f64, iters));
        elapsed
    }

    /// Nanoseconds per iteration over the measured samples (total time / total
    /// iterations, close to criterion's slope estimate).
    fn per_iter(&self, name: &str) -> Option<f64> {
        let map = self.0.borrow();
        let v = map.get(name)?;
        let measured = &v[v.len().saturating_sub(SAMPLES)..];
        let ns: f64 = measured.iter().map(|(ns, _)| ns).sum();
        let iters: u64 = measured.iter().map(|(_, i)| i).sum();
        Some(ns / iters.max(1) as f64)
    }
}

/// An engine under test and the workload that built it (which goes on past `now`).
struct Built {
    tickets: u64,
    engine: Engine,
    gen: common::Gen,
}

/// What building the largest engine under the counting allocator showed.
struct Memory {
    tickets: u64,
    live_bytes: isize,
    text_len: usize,
    text_capacity: usize,
    deliveries: u64,
    build: Duration,
}

fn build_counted(tickets: u64, now: Micros) -> (Built, Memory) {
    let started = Instant::now();
    LIVE.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    let (engine, deliveries, gen) = common::build(tickets, now);
    COUNTING.store(false, Relaxed);
    let build = started.elapsed();
    let live_bytes = LIVE.load(Relaxed);
    let (mut text_len, mut text_capacity) = (0, 0);
    for t in engine.all_tickets() {
        text_len += t.title.len() + t.description.len() + t.message_ts.len();
        text_capacity += t.title.capacity() + t.description.capacity() + t.message_ts.capacity();
    }
    let memory = Memory {
        tickets: engine.ticket_count(),
        live_bytes,
        text_len,
        text_capacity,
        deliveries,
        build,
    };
    let built = Built {
        tickets,
        engine,
        gen,
    };
    (built, memory)
}

// ------------------------------------------------------------ benches

/// (a) Deliveries applied per second to an engine that keeps growing at the
/// rate it was built with (run last: it adds tickets after `now`).
fn bench_apply(c: &mut Criterion, rec: &Record, engines: &mut [Built], now: Micros) {
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(1));
    for b in engines.iter_mut() {
        let n = b.tickets;
        let (engine, gen) = (&mut b.engine, &mut b.gen);
        // Windows at `now`, as on a server that has answered a read.
        engine.stats_v2(now, 0);
        g.bench_function(BenchmarkId::new("growing_from", n), |bch| {
            bch.iter_custom(|iters| {
                let batch: Vec<Delivery> = (0..iters)
                    .map(|_| {
                        gen.next_until(Micros(i64::MAX))
                            .expect("an unbounded workload never ends")
                    })
                    .collect();
                let started = Instant::now();
                for d in &batch {
                    black_box(engine.apply(d));
                    // As `App::ingest` does after every delivery.
                    black_box(engine.take_changed());
                }
                rec.add(&format!("apply/{n}"), started.elapsed(), iters)
            })
        });
    }
    g.finish();
}

/// (b) `stats_v2(now, 0)`: at a fixed `now`, and with `now` one second (or one
/// minute) later per call, so the windows move as on a live server.
fn bench_stats(c: &mut Criterion, rec: &Record, engines: &mut [Built], now: Micros) {
    let mut g = c.benchmark_group("stats_v2");
    for b in engines.iter_mut() {
        let n = b.tickets;
        let engine = &mut b.engine;
        engine.stats_v2(now, 0);
        g.bench_function(BenchmarkId::new("same_now", n), |bch| {
            bch.iter_custom(|iters| {
                engine.stats_v2(now, 0);
                let started = Instant::now();
                for _ in 0..iters {
                    black_box(engine.stats_v2(now, 0));
                }
                rec.add(&format!("same_now/{n}"), started.elapsed(), iters)
            })
        });
        for (label, step) in [("step_1s", 1_000_000i64), ("step_60s", 60_000_000)] {
            g.bench_function(BenchmarkId::new(label, n), |bch| {
                bch.iter_custom(|iters| {
                    // Untimed: bring the windows back to `now`, so every sample moves
                    // them over the same stretch of history.
                    engine.stats_v2(now, 0);
                    let started = Instant::now();
                    for k in 1..=iters {
                        black_box(engine.stats_v2(now.plus(k as i64 * step), 0));
                    }
                    rec.add(&format!("{label}/{n}"), started.elapsed(), iters)
                })
            });
        }
        engine.stats_v2(now, 0);
    }
    g.finish();
}

/// (c) `tickets()` for a `created_at` range holding about ten tickets.
fn bench_tickets(c: &mut Criterion, rec: &Record, engines: &[Built], now: Micros) -> Vec<usize> {
    let mut g = c.benchmark_group("tickets");
    let mut found = Vec::new();
    for b in engines {
        let n = b.tickets;
        let since = now.plus(-30 * DAY);
        let q = TicketQuery {
            status: None,
            since: Some(since),
            until: Some(since.plus(10 * common::SPAN / n as i64)),
        };
        found.push(b.engine.tickets(q, 0).len());
        g.bench_function(BenchmarkId::new("narrow_10", n), |bch| {
            bch.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    black_box(b.engine.tickets(q, 0));
                }
                rec.add(&format!("tickets/{n}"), started.elapsed(), iters)
            })
        });
    }
    g.finish();
    found
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // `SESHAT_BENCH_SIZES=1000,100000` picks other engine sizes (ascending).
    let sizes: Vec<u64> = match std::env::var("SESHAT_BENCH_SIZES") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) if full => vec![1_000, 100_000, 1_000_000],
        Err(_) => vec![1_000],
    };
    // A fixed `now` (2026-01-01T00:00:00Z) keeps runs comparable.
    let now = Micros(1_767_225_600_000_000);
    let mut c = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let rec = Record::default();

    // The largest engine is built once, under the counting allocator, and reused.
    let largest = *sizes.last().expect("at least one size");
    let mut engines = Vec::new();
    let mut memory = None;
    for &n in &sizes {
        if n == largest {
            let (b, m) = build_counted(n, now);
            memory = Some(m);
            engines.push(b);
        } else {
            let (engine, _, gen) = common::build(n, now);
            engines.push(Built {
                tickets: n,
                engine,
                gen,
            });
        }
    }

    bench_stats(&mut c, &rec, &mut engines, now);
    let found = bench_tickets(&mut c, &rec, &engines, now);
    bench_apply(&mut c, &rec, &mut engines, now);
    c.final_summary();

    // ---------------------------------------------------------------- summary
    let ns = |k: &str| rec.per_iter(k).unwrap_or(f64::NAN);
    let (small, big) = (sizes[0], largest);
    eprintln!();
    eprintln!("== seshat engine summary (time / iterations over the measured samples) ==");
    if let Some(m) = &memory {
        eprintln!(
            "build {:>7} tickets         {:>12.0} events/s ({} deliveries in {:.2} s, counting allocator on)",
            m.tickets,
            m.deliveries as f64 / m.build.as_secs_f64(),
            m.deliveries,
            m.build.as_secs_f64()
        );
    }
    eprintln!(
        "{:<10}{:>14}{:>14}{:>14}{:>14}{:>16}",
        "tickets", "same_now ns", "step_1s ns", "step_60s ns", "list10 ns", "apply events/s"
    );
    for (b, k) in engines.iter().zip(&found) {
        let n = b.tickets;
        eprintln!(
            "{:<10}{:>14.0}{:>14.0}{:>14.0}{:>14.0}{:>16.0}   (list returned {k})",
            n,
            ns(&format!("same_now/{n}")),
            ns(&format!("step_1s/{n}")),
            ns(&format!("step_60s/{n}")),
            ns(&format!("tickets/{n}")),
            1e9 / ns(&format!("apply/{n}")),
        );
    }
    let ratio = |k: &str| ns(&format!("{k}/{big}")) / ns(&format!("{k}/{small}"));
    eprintln!(
        "ratio {big}/{small} (time): same_now {:.2}, step_1s {:.2}, step_60s {:.2}, list10 {:.2}, apply {:.2}",
        ratio("same_now"),
        ratio("step_1s"),
        ratio("step_60s"),
        ratio("tickets"),
        ratio("apply")
    );
    if let Some(m) = &memory {
        let t = m.tickets.max(1) as f64;
        eprintln!(
            "memory at {} tickets: {:.1} MiB live after build; text {:.1} MiB (len) / {:.1} MiB (capacity)",
            m.tickets,
            m.live_bytes as f64 / 1048576.0,
            m.text_len as f64 / 1048576.0,
            m.text_capacity as f64 / 1048576.0
        );
        eprintln!(
            "memory per ticket: {:.0} B total, {:.0} B excluding text (len), {:.0} B excluding text (capacity); size_of::<Ticket>() = {} B",
            m.live_bytes as f64 / t,
            (m.live_bytes as f64 - m.text_len as f64) / t,
            (m.live_bytes as f64 - m.text_capacity as f64) / t,
            std::mem::size_of::<seshat::model::Ticket>()
        );
    }
}
