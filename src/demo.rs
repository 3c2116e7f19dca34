//! A simulated help channel for `seshat demo`: realistic arrivals with a
//! day/night cycle, helpers answering after realistic delays, resolutions,
//! reopenings and tags, produced as ordinary deliveries.

use crate::model::{Config, Delivery, Event, Message};
use crate::time::{Micros, DAY, HOUR};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The demo's help channel.
pub const HELP_CHANNEL: &str = "C0DEMOHELP";
/// The demo's team channel.
pub const TEAM_CHANNEL: &str = "C0DEMOTEAM";
const HELPERS: [&str; 6] = [
    "U0HELPAMY",
    "U0HELPBEN",
    "U0HELPCAT",
    "U0HELPDAN",
    "U0HELPEVE",
    "U0HELPFIN",
];
const QUESTIONS: [&str; 12] = [
    "My Hackatime dashboard shows 0 hours since yesterday",
    "How do I submit my project for review?\nI pushed everything to GitHub already.",
    "Can't log in: the magic link says it expired",
    "Is the shop open for international shipping?",
    "My ship got rejected but I don't understand the feedback <@U0HELPAMY>",
    "Where do I find the *deadline* for this round?",
    "Payment for the grant hasn't arrived &amp; it's been 2 weeks",
    "The VS Code extension keeps saying `invalid api key`",
    "Can two people work on the same project?",
    "Identity verification stuck on \"pending\" for 5 days",
    "Got a 500 error when uploading my demo video <https://example.com/upload|upload page>",
    "How are hours counted when I code offline?",
];
const TAGS: [&str; 5] = ["billing", "hackatime", "shop", "identity", "bug"];

/// The demo's engine configuration.
pub fn config() -> Config {
    Config {
        help_channels: vec![HELP_CHANNEL.into()],
        team_channel: Some(TEAM_CHANNEL.into()),
        helpers: HELPERS.iter().map(|h| h.to_string()).collect(),
        workspace: "demo".into(),
        ..Config::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Arrival,
    HelperReply { ticket: String, helper: usize },
    OpenerReply { ticket: String, opener: String },
    Resolve { ticket: String, helper: usize },
    ReactResolve { ticket: String, user: String },
    Reopen { ticket: String, opener: String },
    Tag { ticket: String, helper: usize },
}

/// The simulator: a queue of future steps drained up to a given instant.
pub struct Demo {
    rng: SmallRng,
    queue: BinaryHeap<Reverse<(Micros, u64, Step)>>,
    seq: u64,
    events: u64,
}

impl Demo {
    /// A simulator whose history starts at `start`.
    pub fn new(start: Micros, seed: u64) -> Self {
        let mut d = Demo {
            rng: SmallRng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            events: 0,
        };
        d.schedule(start, Step::Arrival);
        d
    }

    fn schedule(&mut self, at: Micros, step: Step) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, step)));
    }

    /// Arrivals per hour at `t`: busy afternoons (UTC), quiet nights.
    fn rate(t: Micros) -> f64 {
        let hour = (t.0.rem_euclid(DAY) / HOUR) as f64;
        let day = ((hour - 16.0) / 24.0 * std::f64::consts::TAU).cos();
        2.5 + 2.0 * day
    }

    fn exp(&mut self, mean_minutes: f64) -> i64 {
        let u: f64 = self.rng.gen_range(1e-9..1.0);
        (-u.ln() * mean_minutes * 60_000_000.0) as i64
    }

    /// Every delivery with a time ≤ `until`, in time order.
    pub fn until(&mut self, until: Micros) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > until {
                break;
            }
            let Some(Reverse((at, _, step))) = self.queue.pop() else {
                break;
            };
            self.run(at, step, &mut out);
        }
        out
    }

    fn run(&mut self, at: Micros, step: Step, out: &mut Vec<Delivery>) {
        let ts = slack_ts(at);
        match step {
            Step::Arrival => {
                let next = self.exp(60.0 / Self::rate(at));
                self.schedule(at.plus(next.max(1)), Step::Arrival);
                let opener = format!("U0USER{:03}", self.rng.gen_range(0..400));
                let text = QUESTIONS[self.rng.gen_range(0..QUESTIONS.len())];
                out.push(self.message(at, &ts, None, &opener, text));
                let night = Self::rate(at) < 1.5;
                let roll: f64 = self.rng.gen();
                if roll < 0.03 {
                    // No helper ever answers; the opener gives up and marks it done.
                    let t = at.plus(self.exp(240.0) + 1);
                    self.schedule(
                        t,
                        Step::ReactResolve {
                            ticket: ts.clone(),
                            user: opener,
                        },
                    );
                    return;
                }
                let helper = self.rng.gen_range(0..HELPERS.len());
                let wait = self.exp(if night { 90.0 } else { 18.0 });
                let answered = at.plus(wait + 1);
                self.schedule(
                    answered,
                    Step::HelperReply {
                        ticket: ts.clone(),
                        helper,
                    },
                );
                if self.rng.gen_bool(0.6) {
                    let t = answered.plus(self.exp(10.0) + 1);
                    self.schedule(
                        t,
                        Step::OpenerReply {
                            ticket: ts.clone(),
                            opener: opener.clone(),
                        },
                    );
                }
                if self.rng.gen_bool(0.2) {
                    let t = answered.plus(self.exp(5.0) + 2);
                    self.schedule(
                        t,
                        Step::Tag {
                            ticket: ts.clone(),
                            helper,
                        },
                    );
                }
                let done = answered.plus(self.exp(45.0) + 3);
                if self.rng.gen_bool(0.25) {
                    self.schedule(
                        done,
                        Step::ReactResolve {
                            ticket: ts.clone(),
                            user: opener.clone(),
                        },
                    );
                } else if self.rng.gen_bool(0.93) {
                    self.schedule(
                        done,
                        Step::Resolve {
                            ticket: ts.clone(),
                            helper,
                        },
                    );
                }
                if self.rng.gen_bool(0.06) {
                    let t = done.plus(self.exp(120.0) + 1);
                    self.schedule(
                        t,
                        Step::Reopen {
                            ticket: ts.clone(),
                            opener,
                        },
                    );
                }
            }
            Step::HelperReply { ticket, helper } => {
                let text = "Thanks for reaching out! Could you share a screenshot?";
                out.push(self.message(at, &ts, Some(&ticket), HELPERS[helper], text));
            }
            Step::OpenerReply { ticket, opener } => {
                out.push(self.message(at, &ts, Some(&ticket), &opener, "Here you go, thanks!"));
            }
            Step::Tag { ticket, helper } => {
                let text = format!("?tag {}", TAGS[self.rng.gen_range(0..TAGS.len())]);
                out.push(self.message(at, &ts, Some(&ticket), HELPERS[helper], &text));
            }
            Step::Resolve { ticket, helper } => {
                let text = if self.rng.gen_bool(0.8) {
                    "?resolve"
                } else {
                    "?faq"
                };
                out.push(self.message(at, &ts, Some(&ticket), HELPERS[helper], text));
            }
            Step::ReactResolve { ticket, user } => {
                out.push(self.check_mark(at, true, user, ticket));
            }
            Step::Reopen { ticket, opener } => {
                out.push(self.message(
                    at,
                    &ts,
                    Some(&ticket),
                    &opener,
                    "Actually it's broken again :(",
                ));
                let helper = self.rng.gen_range(0..HELPERS.len());
                let t = at.plus(self.exp(15.0) + 1);
                self.schedule(
                    t,
                    Step::Resolve {
                        ticket: ticket.clone(),
                        helper,
                    },
                );
                out.push(self.check_mark(at, false, opener, ticket));
            }
        }
    }

    fn check_mark(&mut self, at: Micros, added: bool, user: String, ticket: String) -> Delivery {
        self.events += 1;
        Delivery {
            event_id: Some(format!("EvDemo{:08}", self.events)),
            time: at,
            bot_user: None,
            event: Event::Reaction {
                added,
                user,
                reaction: "white_check_mark".into(),
                channel: HELP_CHANNEL.into(),
                item_ts: ticket,
                at,
            },
        }
    }

    fn message(
        &mut self,
        at: Micros,
        ts: &str,
        thread: Option<&str>,
        user: &str,
        text: &str,
    ) -> Delivery {
        self.events += 1;
        Delivery {
            event_id: Some(format!("EvDemo{:08}", self.events)),
            time: at,
            bot_user: None,
            event: Event::Message(Message {
                channel: HELP_CHANNEL.into(),
                ts: ts.to_string(),
                at,
                thread_ts: thread.map(String::from),
                user: Some(user.to_string()),
                bot: false,
                subtype: None,
                text: text.to_string(),
            }),
        }
    }
}

/// Formats an instant as a Slack `ts` (`seconds.micros`).
pub fn slack_ts(t: Micros) -> String {
    format!(
        "{}.{:06}",
        t.0.div_euclid(1_000_000),
        t.0.rem_euclid(1_000_000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;

    #[test]
    fn two_weeks_of_demo_fill_every_window() {
        let now = Micros(1_767_225_600_000_000);
        let mut demo = Demo::new(now.plus(-14 * DAY), 7);
        let mut engine = Engine::new(config());
        for d in demo.until(now) {
            engine.apply(&d);
        }
        let s = engine.stats_v2(now, 0);
        assert!(s.past_24h.new_tickets_total > 10);
        assert!(s.past_24h_previous.new_tickets_total > 10);
        assert!(s.past_7d_previous.new_tickets_total > 100);
        assert!(
            s.all_time.tickets_closed > 0
                && s.all_time.tickets_in_progress + s.all_time.tickets_open > 0
        );
        assert!(!s.past_7d.helpers_leaderboard.is_empty());
    }
}
