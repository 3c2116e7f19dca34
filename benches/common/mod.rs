//! A deterministic help-channel workload shared by the benches: tickets arrive
//! evenly over a span, every ticket gets a helper reply, most are resolved with
//! `?resolve`, some are reopened (and most of those resolved again).

// Each bench binary uses a different part of this module.
#![allow(dead_code)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use seshat::demo::slack_ts;
use seshat::engine::Engine;
use seshat::model::{Config, Delivery, Event, Message};
use seshat::time::{Micros, DAY};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The help channel every generated ticket is in.
pub const CHANNEL: &str = "C1";
/// History length of a generated engine.
pub const SPAN: i64 = 60 * DAY;
const MINUTE: i64 = 60_000_000;
const HELPERS: [&str; 8] = [
    "UHELPER00",
    "UHELPER01",
    "UHELPER02",
    "UHELPER03",
    "UHELPER04",
    "UHELPER05",
    "UHELPER06",
    "UHELPER07",
];
const QUESTIONS: [&str; 8] = [
    "My Hackatime dashboard shows 0 hours since yesterday",
    "How do I submit my project for review?\nI pushed everything to GitHub already.",
    "Can't log in: the magic link says it expired",
    "Is the shop open for international shipping?",
    "Payment for the grant hasn't arrived &amp; it's been 2 weeks <@UHELPER01>",
    "The VS Code extension keeps saying `invalid api key`",
    "Identity verification stuck on \"pending\" for 5 days",
    "Got a 500 error when uploading my demo video <https://example.com/upload|upload page>",
];

/// The engine configuration of every generated workload.
pub fn config() -> Config {
    Config {
        help_channels: vec![CHANNEL.into()],
        helpers: HELPERS.iter().map(|h| h.to_string()).collect(),
        workspace: "bench".into(),
        ..Config::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Arrival,
    Reply {
        ts: String,
        user: String,
    },
    Macro {
        ts: String,
        helper: usize,
        name: &'static str,
    },
}

/// The workload: `tickets` arrivals from `start`, one per `gap` (with jitter),
/// and their follow-ups, produced in time order.
pub struct Gen {
    rng: SmallRng,
    queue: BinaryHeap<Reverse<(i64, u64, Step)>>,
    seq: u64,
    events: u64,
    start: i64,
    gap: i64,
    arrivals: u64,
    tickets: u64,
    users: u32,
}

impl Gen {
    /// `tickets` tickets spread over [`SPAN`] ending at `now`; `unbounded` keeps
    /// tickets arriving at the same rate after that (for a growing engine).
    pub fn new(tickets: u64, now: Micros, unbounded: bool) -> Self {
        let gap = (SPAN / tickets as i64).max(2);
        let mut g = Gen {
            rng: SmallRng::seed_from_u64(tickets),
            queue: BinaryHeap::new(),
            seq: 0,
            events: 0,
            start: now.0 - SPAN,
            gap,
            arrivals: 0,
            tickets: if unbounded { u64::MAX } else { tickets },
            users: (tickets / 5).clamp(50, 50_000) as u32,
        };
        g.push(g.start, Step::Arrival);
        g
    }

    fn push(&mut self, at: i64, step: Step) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, step)));
    }

    fn exp(&mut self, mean_minutes: f64) -> i64 {
        let u: f64 = self.rng.gen_range(1e-9..1.0);
        (-u.ln() * mean_minutes * MINUTE as f64) as i64 + 1_000_000
    }

    /// The next delivery with a time ≤ `until`, if any.
    pub fn next_until(&mut self, until: Micros) -> Option<Delivery> {
        loop {
            let Reverse((at, _, _)) = self.queue.peek()?;
            if *at > until.0 {
                return None;
            }
            let Reverse((at, _, step)) = self.queue.pop()?;
            if let Some(d) = self.run(at, step) {
                return Some(d);
            }
        }
    }

    fn run(&mut self, at: i64, step: Step) -> Option<Delivery> {
        match step {
            Step::Arrival => {
                self.arrivals += 1;
                if self.arrivals < self.tickets {
                    // Even spacing with jitter below one gap keeps every top-level ts unique.
                    let next = self.start + self.arrivals as i64 * self.gap;
                    let jitter = self.rng.gen_range(0..self.gap / 2);
                    self.push(next + jitter, Step::Arrival);
                }
                let ts = slack_ts(Micros(at));
                let opener = format!("U{:08}", self.rng.gen_range(0..self.users));
                let helper = self.rng.gen_range(0..HELPERS.len());
                let answered = at + self.exp(20.0);
                self.push(
                    answered,
                    Step::Reply {
                        ts: ts.clone(),
                        user: HELPERS[helper].into(),
                    },
                );
                if self.rng.gen_bool(0.4) {
                    let t = answered + self.exp(10.0);
                    self.push(
                        t,
                        Step::Reply {
                            ts: ts.clone(),
                            user: opener.clone(),
                        },
                    );
                }
                if self.rng.gen_bool(0.88) {
                    let done = answered + self.exp(45.0);
                    self.push(
                        done,
                        Step::Macro {
                            ts: ts.clone(),
                            helper,
                            name: "?resolve",
                        },
                    );
                    if self.rng.gen_bool(0.07) {
                        let reopened = done + self.exp(180.0);
                        self.push(
                            reopened,
                            Step::Macro {
                                ts: ts.clone(),
                                helper,
                                name: "?reopen",
                            },
                        );
                        if self.rng.gen_bool(0.7) {
                            let again = reopened + self.exp(30.0);
                            self.push(
                                again,
                                Step::Macro {
                                    ts: ts.clone(),
                                    helper,
                                    name: "?resolve",
                                },
                            );
                        }
                    }
                }
                let text = QUESTIONS[self.rng.gen_range(0..QUESTIONS.len())];
                Some(self.message(at, None, &opener, text))
            }
            Step::Reply { ts, user } => {
                let text = "Thanks! Could you share a screenshot of the error?";
                Some(self.message(at, Some(ts), &user, text))
            }
            Step::Macro { ts, helper, name } => {
                Some(self.message(at, Some(ts), HELPERS[helper], name))
            }
        }
    }

    fn message(&mut self, at: i64, thread: Option<String>, user: &str, text: &str) -> Delivery {
        self.events += 1;
        Delivery {
            event_id: Some(format!("Ev{:012}", self.events)),
            time: Micros(at),
            bot_user: None,
            event: Event::Message(Message {
                channel: CHANNEL.into(),
                ts: slack_ts(Micros(at)),
                at: Micros(at),
                thread_ts: thread,
                user: Some(user.to_string()),
                bot: false,
                subtype: None,
                text: text.to_string(),
            }),
        }
    }
}

/// An engine holding `tickets` tickets created over the [`SPAN`] before `now`,
/// the number of deliveries applied, and the workload, which goes on past `now`
/// at the same rate (its follow-ups later than `now` are not applied yet).
pub fn build(tickets: u64, now: Micros) -> (Engine, u64, Gen) {
    let mut engine = Engine::new(config());
    let mut gen = Gen::new(tickets, now, true);
    let mut applied = 0;
    while let Some(d) = gen.next_until(now) {
        engine.apply(&d);
        // The server drains the push stream's change list after every delivery.
        engine.take_changed();
        applied += 1;
    }
    (engine, applied, gen)
}
