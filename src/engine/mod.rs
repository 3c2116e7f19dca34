//! The pure core: deliveries in, ticket state and statistics out.
//!
//! No I/O and no clock reads: every method that depends on time takes `now`.
//! Each ticket's contribution to every counter is removed before it changes and
//! added back after (see [`aggregate`]), and the four rolling windows move with
//! `now` by visiting only the tickets whose timestamps cross a window edge.

pub mod aggregate;
pub mod series;

use crate::model::{Config, Delivery, Event, LastBy, Message, Status, Ticket, TicketId, UserId};
use crate::report::{
    LeaderEntry, OldestTicket, OverallStats, StatsV2, TicketView, TimeBoundStats, UserRef,
    UserStats,
};
use crate::text::{derive_title, macro_word};
use crate::time::{Micros, DAY, HOUR};
use aggregate::{mask_for, window_bounds, Agg, ALL_TIME, WINDOWS};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Bound;

/// How long an applied `event_id` is remembered (Slack retries within minutes).
const DEDUPE_HORIZON: i64 = DAY;
/// The R4 window in which the assignee keeps the credit.
const CREDIT_WINDOW: i64 = 48 * HOUR;

/// What happened to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It changed the state.
    Applied,
    /// Its `event_id` was applied before.
    Duplicate,
    /// It changed nothing (noise, or a rule said to ignore it).
    Ignored,
}

/// Ticket list filter for `/api/tickets`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TicketQuery {
    /// Only this status.
    pub status: Option<Status>,
    /// `created_at` ≥ this.
    pub since: Option<Micros>,
    /// `created_at` ≤ this.
    pub until: Option<Micros>,
}

/// The state a snapshot must keep; every index is rebuilt from it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Persisted {
    /// Tickets by id − 1; `None` for deleted ones.
    pub tickets: Vec<Option<Ticket>>,
    /// Slack ids by user id − 1.
    pub users: Vec<String>,
    /// Current helper Slack ids.
    pub helpers: Vec<String>,
    /// The bot's own user, once learnt.
    pub bot_user: Option<String>,
    /// Remembered `event_id`s with their delivery time, oldest first.
    pub seen: Vec<(Micros, String)>,
    /// The stale clock: the latest delivery time or answered `now`.
    pub clock: Option<Micros>,
    /// Top-level `ts` values of deleted tickets, per channel index, so a replay does not revive them.
    pub deleted: Vec<(u16, String)>,
    /// The help channels the channel indexes above refer to.
    pub channels: Vec<String>,
}

/// Why saved state cannot be restored under the current configuration.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A channel holding saved tickets is no longer watched.
    #[error(
        "the saved state has tickets in help channel {0}, which SLACK_HELP_CHANNEL no longer lists; \
         add it back (channels may be reordered or added freely)"
    )]
    ChannelDropped(String),
}

/// Per-scope (all channels, or one) counters and ordered indexes.
#[derive(Debug, Default)]
struct Group {
    all_time: Agg,
    windows: [Agg; 4],
    /// Open tickets whose last message is not a helper's, by `last_msg_at`.
    unanswered: BTreeSet<(Micros, TicketId)>,
    /// Tickets by status, ordered by `created_at`.
    by_status: [BTreeSet<(Micros, TicketId)>; 3],
    /// Per user: tickets opened, and closes credited on others' tickets.
    users: HashMap<UserId, (i64, i64)>,
    /// Hour and day buckets for the time series.
    series: series::Series,
}

/// The engine: ticket state, users, helpers and every maintained statistic.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    channel_ix: HashMap<String, u16>,
    tickets: Vec<Option<Ticket>>,
    by_ts: HashMap<(u16, String), TicketId>,
    users: Vec<String>,
    user_ix: HashMap<String, UserId>,
    helpers: HashSet<String>,
    trusted: HashSet<String>,
    resolving: HashSet<String>,
    bot_user: Option<String>,
    seen: HashSet<String>,
    seen_order: VecDeque<(Micros, String)>,
    clock: Option<Micros>,
    /// Ordered `(created_at | closed_at | assigned_at, id)`: the window edges walk these.
    fields: [BTreeSet<(Micros, TicketId)>; 3],
    /// Per ticket (by id − 1): which window holds which of its timestamps.
    masks: Vec<[u8; 4]>,
    windows_at: Option<Micros>,
    stale: BTreeSet<(Micros, TicketId)>,
    groups: Vec<Group>,
    version: u64,
    /// Tickets changed since the last `take_changed` (for the push stream).
    changed: Vec<TicketId>,
}

impl Engine {
    /// An empty engine.
    pub fn new(config: Config) -> Self {
        let channel_ix = config
            .help_channels
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), i as u16))
            .collect();
        let mut resolving: HashSet<String> = ["resolve", "close"].map(String::from).into();
        resolving.extend(config.resolving_macros.iter().map(|m| m.to_lowercase()));
        let groups = (0..=config.help_channels.len())
            .map(|_| Group::default())
            .collect();
        Engine {
            channel_ix,
            tickets: Vec::new(),
            by_ts: HashMap::new(),
            users: Vec::new(),
            user_ix: HashMap::new(),
            helpers: config.helpers.iter().cloned().collect(),
            trusted: config.trusted_bots.iter().cloned().collect(),
            resolving,
            bot_user: config.bot_user.clone(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            clock: None,
            fields: Default::default(),
            masks: Vec::new(),
            windows_at: None,
            stale: BTreeSet::new(),
            groups,
            version: 0,
            changed: Vec::new(),
            config,
        }
    }

    /// Rebuilds an engine from persisted state (every index recomputed).
    pub fn restore(config: Config, p: Persisted) -> Result<Self, RestoreError> {
        let mut e = Engine::new(config);
        // Saved channel indexes refer to the saved channel list; map them by name.
        let remap: Vec<u16> = p
            .channels
            .iter()
            .map(|c| e.channel_ix.get(c).copied().ok_or(c))
            .collect::<Result<_, _>>()
            .map_err(|c| RestoreError::ChannelDropped(c.clone()))?;
        let map = |ix: u16| remap.get(ix as usize).copied().unwrap_or(ix);
        e.users = p.users;
        e.user_ix = e
            .users
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), UserId(i as u32 + 1)))
            .collect();
        e.helpers = p.helpers.into_iter().collect();
        if p.bot_user.is_some() {
            e.bot_user = p.bot_user;
        }
        for (at, id) in p.seen {
            e.seen.insert(id.clone());
            e.seen_order.push_back((at, id));
        }
        e.clock = p.clock;
        for (ch, ts) in p.deleted {
            e.by_ts.insert((map(ch), ts), TicketId(0));
        }
        e.masks = vec![[0; 4]; p.tickets.len()];
        e.tickets = p.tickets;
        for ix in 0..e.tickets.len() {
            if let Some(mut t) = e.tickets[ix].take() {
                t.channel = map(t.channel);
                if t.channel as usize >= e.config.help_channels.len() {
                    return Err(RestoreError::ChannelDropped(format!("#{}", t.channel)));
                }
                e.by_ts.insert((t.channel, t.message_ts.clone()), t.id);
                e.attach(t, true);
            }
        }
        Ok(e)
    }

    /// The state a snapshot keeps.
    pub fn persisted(&self) -> Persisted {
        let mut helpers: Vec<String> = self.helpers.iter().cloned().collect();
        helpers.sort();
        let mut deleted: Vec<(u16, String)> = self
            .by_ts
            .iter()
            .filter(|(_, id)| self.ticket_ref(**id).is_none())
            .map(|(k, _)| k.clone())
            .collect();
        deleted.sort();
        Persisted {
            tickets: self.tickets.clone(),
            users: self.users.clone(),
            helpers,
            bot_user: self.bot_user.clone(),
            seen: self.seen_order.iter().cloned().collect(),
            clock: self.clock,
            deleted,
            channels: self.config.help_channels.clone(),
        }
    }

    /// Whether a delivery with this `event_id` was applied (within the dedupe horizon).
    pub fn has_seen(&self, event_id: &str) -> bool {
        self.seen.contains(event_id)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A counter bumped by every change; equal versions mean equal state.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of live tickets.
    pub fn ticket_count(&self) -> u64 {
        self.groups[0].all_time.new_total as u64
    }

    /// The group index for `?channel=`: `Some(0)` for all, `None` if not watched.
    pub fn scope(&self, channel: Option<&str>) -> Option<usize> {
        match channel {
            None => Some(0),
            Some(c) => self.channel_ix.get(c).map(|i| *i as usize + 1),
        }
    }

    // ------------------------------------------------------------------ apply

    /// Applies one delivery (R1–R12) and says what it did.
    pub fn apply(&mut self, d: &Delivery) -> Outcome {
        if let Some(id) = &d.event_id {
            if self.seen.contains(id) {
                return Outcome::Duplicate;
            }
        }
        let before = self.version;
        self.run_stale_until(d.time);
        if let Some(bot) = &d.bot_user {
            if self.bot_user.as_ref() != Some(bot) {
                self.bot_user = Some(bot.clone());
                self.version += 1;
            }
        }
        match &d.event {
            Event::Message(m) => self.on_message(m),
            Event::MessageChanged {
                channel,
                ts,
                text,
                user,
                tombstone,
            } => {
                if *tombstone {
                    self.on_delete(channel, ts);
                } else {
                    self.on_edit(channel, ts, text, user.as_deref());
                }
            }
            Event::MessageDeleted {
                channel,
                deleted_ts,
            } => self.on_delete(channel, deleted_ts),
            Event::Reaction {
                added,
                user,
                reaction,
                channel,
                item_ts,
                at,
            } => {
                if *reaction == self.config.resolution_reaction {
                    if let Some(id) = self.ticket_at(channel, item_ts) {
                        if *added {
                            self.resolve(id, user, *at, false);
                        } else {
                            self.reopen(id, user, *at);
                        }
                    }
                }
            }
            Event::Member {
                joined,
                user,
                channel,
            } => {
                if self.config.team_channel.as_deref() == Some(channel.as_str()) {
                    let changed = if *joined {
                        self.helpers.insert(user.clone())
                    } else {
                        self.helpers.remove(user)
                    };
                    if changed {
                        self.version += 1;
                    }
                }
            }
            Event::Other { .. } => {}
        }
        if let Some(id) = &d.event_id {
            self.remember(id, d.time);
        }
        if self.version != before {
            Outcome::Applied
        } else {
            Outcome::Ignored
        }
    }

    fn remember(&mut self, id: &str, at: Micros) {
        self.seen.insert(id.to_string());
        self.seen_order.push_back((at, id.to_string()));
        // Measured from the delivery's own time, not the stale clock: answers at a
        // fixed `now` far ahead of the deliveries must not evict their ids (R11).
        let horizon = at.plus(-DEDUPE_HORIZON);
        while let Some((t, _)) = self.seen_order.front() {
            if *t >= horizon {
                break;
            }
            if let Some((_, old)) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    fn is_helper(&self, slack: &str) -> bool {
        self.helpers.contains(slack) && self.bot_user.as_deref() != Some(slack)
    }

    fn user_id(&mut self, slack: &str) -> UserId {
        if let Some(id) = self.user_ix.get(slack) {
            return *id;
        }
        self.users.push(slack.to_string());
        let id = UserId(self.users.len() as u32);
        self.user_ix.insert(slack.to_string(), id);
        id
    }

    fn slack_of(&self, u: UserId) -> &str {
        &self.users[u.0 as usize - 1]
    }

    fn ticket_at(&self, channel: &str, ts: &str) -> Option<TicketId> {
        let ch = *self.channel_ix.get(channel)?;
        let id = *self.by_ts.get(&(ch, ts.to_string()))?;
        self.ticket_ref(id).map(|t| t.id)
    }

    fn ticket_ref(&self, id: TicketId) -> Option<&Ticket> {
        let ix = usize::try_from(id.0).ok()?.checked_sub(1)?;
        self.tickets.get(ix)?.as_ref()
    }

    fn on_message(&mut self, m: &Message) {
        let Some(&ch) = self.channel_ix.get(&m.channel) else {
            return;
        };
        if m.bot {
            return;
        }
        let Some(user) = m.user.as_deref() else {
            return;
        };
        let top_level = m.thread_ts.as_deref().is_none_or(|t| t == m.ts);
        let sub = m.subtype.as_deref();
        if top_level {
            if matches!(sub, None | Some("file_share") | Some("me_message")) {
                self.open_ticket(ch, m, user);
            }
            return;
        }
        if !matches!(
            sub,
            None | Some("file_share") | Some("me_message") | Some("thread_broadcast")
        ) {
            return;
        }
        let Some(id) = self.ticket_at(&m.channel, m.thread_ts.as_deref().unwrap_or_default())
        else {
            return;
        };
        let helper = self.is_helper(user);
        if helper {
            if let Some((name, rest)) = macro_word(&m.text) {
                self.run_macro(id, user, &name, rest.trim(), m.at);
                return;
            }
        }
        let Some(t) = self.ticket_ref(id) else { return };
        let known = self.user_ix.get(user).copied();
        let by = if known == Some(t.opened_by) {
            LastBy::Author
        } else if helper {
            LastBy::Helper
        } else {
            LastBy::Other
        };
        let moves_last = m.at > t.last_msg_at || (m.at == t.last_msg_at && t.last_msg_by != by);
        let first_other = by != LastBy::Author && !t.others_replied;
        let assigns = helper
            && t.status != Status::Closed
            && (t.status != Status::InProgress
                || t.assigned_to != known
                || t.assigned_at.is_none());
        // A reply that would change nothing gives its sender no user id (see lifecycle.md).
        if !(moves_last || first_other || assigns) {
            return;
        }
        let uid = self.user_id(user);
        self.change(id, |t| {
            if m.at >= t.last_msg_at {
                t.last_msg_at = m.at;
                t.last_msg_by = by;
            }
            if by != LastBy::Author {
                t.others_replied = true;
            }
            if assigns {
                t.assigned_to = Some(uid);
                t.status = Status::InProgress;
                t.assigned_at.get_or_insert(m.at);
            }
        });
    }

    fn open_ticket(&mut self, ch: u16, m: &Message, user: &str) {
        let key = (ch, m.ts.clone());
        if self.by_ts.contains_key(&key) {
            return;
        }
        let opened_by = self.user_id(user);
        let id = TicketId(self.tickets.len() as u64 + 1);
        self.tickets.push(None);
        self.masks.push([0; 4]);
        self.by_ts.insert(key, id);
        let t = Ticket {
            id,
            channel: ch,
            message_ts: m.ts.clone(),
            title: derive_title(&m.text),
            description: m.text.clone(),
            status: Status::Open,
            opened_by,
            assigned_to: None,
            closed_by: None,
            reopened_by: None,
            created_at: m.at,
            assigned_at: None,
            closed_at: None,
            reopened_at: None,
            last_msg_at: m.at,
            last_msg_by: LastBy::Author,
            tags: Vec::new(),
            others_replied: false,
        };
        self.attach(t, true);
        self.version += 1;
        self.changed.push(id);
    }

    fn run_macro(&mut self, id: TicketId, user: &str, name: &str, rest: &str, at: Micros) {
        if self.resolving.contains(name) {
            self.resolve(id, user, at, false);
        } else if matches!(name, "reopen" | "unresolve" | "open") {
            self.reopen(id, user, at);
        } else if name == "tag" && !rest.is_empty() {
            let Some(t) = self.ticket_ref(id) else { return };
            let lower = rest.to_lowercase();
            if t.status == Status::Closed || t.tags.iter().any(|x| x.to_lowercase() == lower) {
                return;
            }
            self.user_id(user);
            self.change(id, |t| t.tags.push(rest.to_string()));
        }
    }

    /// R4. `forced` skips the permission check (stale close).
    fn resolve(&mut self, id: TicketId, user: &str, at: Micros, forced: bool) {
        let Some(t) = self.ticket_ref(id) else { return };
        if t.status == Status::Closed {
            return;
        }
        let opener = t.opened_by;
        let assignee = t.assigned_to;
        let recent = at.0 - t.last_msg_at.0 <= CREDIT_WINDOW;
        let helper = self.is_helper(user);
        let trusted = self.trusted.contains(user);
        let is_opener = self.user_ix.get(user) == Some(&opener);
        if !(forced || helper || is_opener || trusted) {
            return;
        }
        let actor = self.user_id(user);
        let credit = match assignee {
            Some(a) if recent || !helper => Some(a),
            _ if trusted => assignee,
            _ => Some(actor),
        };
        self.change(id, |t| {
            t.status = Status::Closed;
            t.closed_by = credit;
            t.closed_at = Some(at);
        });
    }

    /// R5.
    fn reopen(&mut self, id: TicketId, user: &str, at: Micros) {
        let Some(t) = self.ticket_ref(id) else { return };
        if t.status != Status::Closed {
            return;
        }
        let is_opener = self.user_ix.get(user) == Some(&t.opened_by);
        if !(self.is_helper(user) || is_opener || self.trusted.contains(user)) {
            return;
        }
        let actor = self.user_id(user);
        self.change(id, |t| {
            t.status = Status::Open;
            t.closed_by = None;
            t.closed_at = None;
            t.reopened_by = Some(actor);
            t.reopened_at = Some(at);
        });
    }

    /// R7.
    fn on_delete(&mut self, channel: &str, ts: &str) {
        let Some(id) = self.ticket_at(channel, ts) else {
            return;
        };
        let ix = id.0 as usize - 1;
        if self.tickets[ix].as_ref().is_some_and(|t| t.others_replied) {
            return;
        }
        if let Some(t) = self.tickets[ix].take() {
            self.detach(&t, true);
            self.version += 1;
            self.changed.push(id);
        }
    }

    /// R8.
    fn on_edit(&mut self, channel: &str, ts: &str, text: &str, user: Option<&str>) {
        let Some(id) = self.ticket_at(channel, ts) else {
            return;
        };
        if self.ticket_ref(id).is_some_and(|t| t.description == text) {
            return;
        }
        if let Some(u) = user {
            self.user_id(u);
        }
        self.change(id, |t| {
            t.description = text.to_string();
            t.title = derive_title(text);
        });
    }

    // ------------------------------------------------------------------ time

    /// R10: closes every stale ticket whose stale instant is ≤ `t`, in instant order.
    fn run_stale_until(&mut self, t: Micros) {
        self.clock = Some(self.clock.map_or(t, |c| c.max(t)));
        if self.config.stale_after_days.is_none() {
            return;
        }
        while let Some(&(s, id)) = self.stale.first() {
            if s > t {
                break;
            }
            self.stale.pop_first();
            let Some(tk) = self.ticket_ref(id) else {
                continue;
            };
            let by = tk.assigned_to.unwrap_or(tk.opened_by);
            let slack = self.slack_of(by).to_string();
            self.resolve(id, &slack, s, true);
        }
    }

    /// Brings stale closes and the rolling windows up to `now`.
    pub fn advance(&mut self, now: Micros) {
        self.run_stale_until(now);
        let Some(old) = self.windows_at else {
            self.windows_at = Some(now);
            let lo = window_bounds(3, now).0;
            self.recompute_masks(lo, now.plus(1), now);
            return;
        };
        if old == now {
            return;
        }
        self.windows_at = Some(now);
        // The stretches each window edge swept over. The four windows have only
        // five distinct edges (now, now − 1 d, − 2 d, − 7 d, − 14 d), so merging
        // the eight stretches visits each crossing ticket and B-tree range once.
        let mut swept: Vec<(Micros, Micros)> = (0..WINDOWS.len())
            .flat_map(|w| {
                let (lo0, hi0) = window_bounds(w, old);
                let (lo1, hi1) = window_bounds(w, now);
                [(lo0.min(lo1), lo0.max(lo1)), (hi0.min(hi1), hi0.max(hi1))]
            })
            .collect();
        swept.sort_unstable();
        let mut merged: Vec<(Micros, Micros)> = Vec::with_capacity(swept.len());
        for (lo, hi) in swept {
            match merged.last_mut() {
                Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        for (lo, hi) in merged {
            self.recompute_masks(lo, hi, now);
        }
    }

    /// Re-evaluates window membership of every ticket with a timestamp in `[lo, hi)`.
    fn recompute_masks(&mut self, lo: Micros, hi: Micros, now: Micros) {
        if lo >= hi {
            return;
        }
        let mut ids: Vec<TicketId> = Vec::new();
        for f in &self.fields {
            ids.extend(
                f.range((lo, TicketId(0))..(hi, TicketId(0)))
                    .map(|(_, id)| *id),
            );
        }
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let ix = id.0 as usize - 1;
            // Borrowed in place: moving the 208-byte ticket out and back in was
            // about a tenth of a 60 s-step read (`memcpy`).
            let Some(t) = &self.tickets[ix] else {
                continue;
            };
            let old = self.masks[ix];
            let new: [u8; 4] = std::array::from_fn(|w| {
                let (lo, hi) = window_bounds(w, now);
                mask_for(t, lo, hi)
            });
            if old != new {
                let g = t.channel as usize + 1;
                for w in 0..WINDOWS.len() {
                    if old[w] != new[w] {
                        for gi in [0, g] {
                            self.groups[gi].windows[w].remask(t, old[w], new[w]);
                        }
                    }
                }
                self.masks[ix] = new;
            }
        }
    }

    // ------------------------------------------------------------------ indexes

    fn change(&mut self, id: TicketId, f: impl FnOnce(&mut Ticket)) {
        let ix = id.0 as usize - 1;
        let Some(mut t) = self.tickets[ix].take() else {
            return;
        };
        let hang_key = (t.created_at, t.assigned_at);
        self.detach(&t, false);
        f(&mut t);
        // The time series' hang-time lists only change with these two fields.
        let hang_changed = hang_key != (t.created_at, t.assigned_at);
        if hang_changed {
            let mut old = t.clone();
            (old.created_at, old.assigned_at) = hang_key;
            self.for_groups(&t, |g| g.series.hang(&old, -1));
            self.for_groups(&t, |g| g.series.hang(&t, 1));
        }
        self.attach(t, false);
        self.version += 1;
        self.changed.push(id);
    }

    /// Ids of the tickets changed (created, updated or deleted) since the last call.
    pub fn take_changed(&mut self) -> Vec<TicketId> {
        std::mem::take(&mut self.changed)
    }

    /// Removes a ticket's contribution from every counter and index.
    fn detach(&mut self, t: &Ticket, with_hang: bool) {
        let ix = t.id.0 as usize - 1;
        let masks = self.masks[ix];
        self.for_groups(t, |g| {
            g.all_time.contribute(t, ALL_TIME, -1);
            for (w, m) in masks.iter().enumerate() {
                g.windows[w].contribute(t, *m, -1);
            }
            g.by_status[t.status.index()].remove(&(t.created_at, t.id));
            if unanswered(t) {
                g.unanswered.remove(&(t.last_msg_at, t.id));
            }
            g.series.counts(t, -1);
            if with_hang {
                g.series.hang(t, -1);
            }
            let u = g.users.entry(t.opened_by).or_default();
            u.0 -= 1;
            if let Some(c) = credited_other(t) {
                g.users.entry(c).or_default().1 -= 1;
            }
        });
        for (f, v) in field_values(t).into_iter().enumerate() {
            if let Some(v) = v {
                self.fields[f].remove(&(v, t.id));
            }
        }
        if let Some(s) = self.stale_instant(t) {
            self.stale.remove(&(s, t.id));
        }
        self.masks[ix] = [0; 4];
    }

    /// Adds a ticket's contribution to every counter and index, and stores it.
    fn attach(&mut self, t: Ticket, with_hang: bool) {
        let ix = t.id.0 as usize - 1;
        let masks: [u8; 4] = match self.windows_at {
            Some(now) => std::array::from_fn(|w| {
                let (lo, hi) = window_bounds(w, now);
                mask_for(&t, lo, hi)
            }),
            None => [0; 4],
        };
        self.masks[ix] = masks;
        self.for_groups(&t, |g| {
            g.all_time.contribute(&t, ALL_TIME, 1);
            for (w, m) in masks.iter().enumerate() {
                g.windows[w].contribute(&t, *m, 1);
            }
            g.by_status[t.status.index()].insert((t.created_at, t.id));
            if unanswered(&t) {
                g.unanswered.insert((t.last_msg_at, t.id));
            }
            g.series.counts(&t, 1);
            if with_hang {
                g.series.hang(&t, 1);
            }
            g.users.entry(t.opened_by).or_default().0 += 1;
            if let Some(c) = credited_other(&t) {
                g.users.entry(c).or_default().1 += 1;
            }
        });
        for (f, v) in field_values(&t).into_iter().enumerate() {
            if let Some(v) = v {
                self.fields[f].insert((v, t.id));
            }
        }
        if let Some(s) = self.stale_instant(&t) {
            self.stale.insert((s, t.id));
        }
        self.tickets[ix] = Some(t);
    }

    fn for_groups(&mut self, t: &Ticket, mut f: impl FnMut(&mut Group)) {
        f(&mut self.groups[0]);
        f(&mut self.groups[t.channel as usize + 1]);
    }

    fn stale_instant(&self, t: &Ticket) -> Option<Micros> {
        let days = self.config.stale_after_days?;
        if t.status == Status::Closed {
            return None;
        }
        let base = t
            .reopened_at
            .map_or(t.last_msg_at, |r| r.max(t.last_msg_at));
        Some(base.plus(i64::from(days) * DAY))
    }

    // ------------------------------------------------------------------ queries

    /// `/api/stats_v2` at `now` for a scope from [`Engine::scope`].
    pub fn stats_v2(&mut self, now: Micros, scope: usize) -> StatsV2 {
        self.advance(now);
        let all_time = self.overall(now, scope);
        // Borrowing the window in place (no `mem::take`) avoids building a throwaway
        // `Agg` (four histogram allocations) per window on every read.
        let [a, b, c, d] = std::array::from_fn(|w| {
            let board = self.leaderboard(&self.groups[scope].windows[w]);
            Self::time_bound(&mut self.groups[scope].windows[w], board)
        });
        StatsV2 {
            all_time,
            past_24h: a,
            past_24h_previous: b,
            past_7d: c,
            past_7d_previous: d,
        }
    }

    fn overall(&mut self, now: Micros, scope: usize) -> OverallStats {
        let oldest = self.groups[scope]
            .unanswered
            .first()
            .and_then(|(_, id)| self.ticket_ref(*id))
            .map(|t| OldestTicket {
                id: t.id.0,
                created_at: t.created_at.to_iso(),
                age_minutes: now.minutes_since(t.created_at),
                link: self.link(t),
            });
        let board = self.leaderboard(&self.groups[scope].all_time);
        let a = &mut self.groups[scope].all_time;
        let count = |s: Status| a.new_by_status[s.index()] as u64;
        OverallStats {
            tickets_total: a.new_total as u64,
            tickets_open: count(Status::Open),
            tickets_in_progress: count(Status::InProgress),
            tickets_closed: count(Status::Closed),
            helpers_leaderboard: board,
            mean_hang_time_minutes_unresolved: a.hang_unresolved.minutes(),
            mean_hang_time_minutes_all: a.hang_all.minutes(),
            mean_resolution_time_minutes: a.resolution.minutes(),
            oldest_unanswered_ticket: oldest,
            hang_time_minutes_percentiles: a.hang_dist.percentiles(),
            resolution_time_minutes_percentiles: a.resolution_dist.percentiles(),
        }
    }

    fn time_bound(a: &mut Agg, helpers_leaderboard: Vec<LeaderEntry>) -> TimeBoundStats {
        let count = |s: Status| a.new_by_status[s.index()] as u64;
        TimeBoundStats {
            new_tickets_total: a.new_total as u64,
            new_tickets_now_closed: count(Status::Closed),
            new_tickets_still_open: count(Status::Open),
            new_tickets_in_progress: count(Status::InProgress),
            closed_today: a.closed_in as u64,
            closed_today_from_today: a.closed_from_in as u64,
            assigned_today_in_progress: a.assigned_in_progress as u64,
            helpers_leaderboard,
            mean_hang_time_minutes_unresolved: a.hang_unresolved.minutes(),
            mean_hang_time_minutes_all: a.hang_all.minutes(),
            mean_resolution_time_minutes: a.resolution.minutes(),
            hang_time_minutes_percentiles: a.hang_dist.percentiles(),
            resolution_time_minutes_percentiles: a.resolution_dist.percentiles(),
        }
    }

    /// Current helpers with credited closes, by count desc then user id: O(helpers).
    fn leaderboard(&self, a: &Agg) -> Vec<LeaderEntry> {
        let mut rows: Vec<LeaderEntry> = self
            .helpers
            .iter()
            .filter(|h| self.bot_user.as_deref() != Some(h.as_str()))
            .filter_map(|h| {
                let uid = *self.user_ix.get(h)?;
                let n = *a.closers.get(&uid)?;
                (n > 0).then(|| LeaderEntry {
                    id: uid.0,
                    slack_id: h.clone(),
                    count: n as u64,
                })
            })
            .collect();
        rows.sort_by(|x, y| y.count.cmp(&x.count).then(x.id.cmp(&y.id)));
        rows
    }

    fn link(&self, t: &Ticket) -> String {
        format!(
            "https://{}.slack.com/archives/{}/p{}",
            self.config.workspace,
            self.config.help_channels[t.channel as usize],
            t.message_ts.replace('.', "")
        )
    }

    /// `TimeBoundStats` for `[since, until)`: O(log n + tickets with a timestamp in range).
    pub fn range_stats(&self, since: Micros, until: Micros, scope: usize) -> TimeBoundStats {
        let mut agg = Agg::default();
        if since < until {
            let mut ids: Vec<TicketId> = self
                .fields
                .iter()
                .flat_map(|f| {
                    f.range((since, TicketId(0))..(until, TicketId(0)))
                        .map(|(_, id)| *id)
                })
                .collect();
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                let Some(t) = self.ticket_ref(id) else {
                    continue;
                };
                if scope == 0 || t.channel as usize + 1 == scope {
                    agg.contribute(t, mask_for(t, since, until), 1);
                }
            }
        }
        let board = self.leaderboard(&agg);
        Self::time_bound(&mut agg, board)
    }

    /// Per-bucket counts and hang times for `[since, until)`: O(buckets).
    pub fn timeseries(
        &self,
        width: series::Width,
        since: Micros,
        until: Micros,
        scope: usize,
    ) -> Vec<series::Point> {
        self.groups[scope].series.points(width, since, until)
    }

    /// One ticket, if it exists in the scope.
    pub fn ticket(&self, id: u64, scope: usize) -> Option<TicketView> {
        let t = self.ticket_ref(TicketId(id))?;
        (scope == 0 || t.channel as usize + 1 == scope).then(|| self.view(t))
    }

    /// Tickets matching `q`, by `created_at` then id: O(log n + k).
    pub fn tickets(&self, q: TicketQuery, scope: usize) -> Vec<TicketView> {
        let since = q.since.unwrap_or(Micros(i64::MIN));
        let until = q.until.unwrap_or(Micros(i64::MAX));
        if since > until {
            return Vec::new();
        }
        let g = &self.groups[scope];
        let statuses: Vec<Status> = match q.status {
            Some(s) => vec![s],
            None => Status::ALL.to_vec(),
        };
        let mut keys: Vec<(Micros, TicketId)> = Vec::new();
        for s in statuses {
            keys.extend(g.by_status[s.index()].range((
                Bound::Included((since, TicketId(0))),
                Bound::Included((until, TicketId(u64::MAX))),
            )));
        }
        keys.sort_unstable();
        keys.iter()
            .filter_map(|(_, id)| self.ticket_ref(*id))
            .map(|t| self.view(t))
            .collect()
    }

    fn user_ref(&self, u: Option<UserId>) -> Option<UserRef> {
        u.map(|u| UserRef {
            id: u.0,
            slack_id: self.slack_of(u).to_string(),
        })
    }

    fn view(&self, t: &Ticket) -> TicketView {
        TicketView {
            id: t.id.0,
            title: t.title.clone(),
            description: t.description.clone(),
            status: t.status.as_str(),
            opened_by: self.user_ref(Some(t.opened_by)),
            closed_by: self.user_ref(t.closed_by),
            assigned_to: self.user_ref(t.assigned_to),
            reopened_by: self.user_ref(t.reopened_by),
            tags: t.tags.clone(),
            created_at: t.created_at.to_iso(),
            message_ts: t.message_ts.clone(),
            channel: self.config.help_channels[t.channel as usize].clone(),
            assigned_at: t.assigned_at.map(Micros::to_iso),
            closed_at: t.closed_at.map(Micros::to_iso),
            reopened_at: t.reopened_at.map(Micros::to_iso),
            team_tags: t.tags.clone(),
        }
    }

    /// `/api/user`: `None` if the user has no id.
    pub fn user(&self, slack_id: &str, scope: usize) -> Option<UserStats> {
        let uid = self.user_ix.get(slack_id)?;
        let (opened, closed) = self.groups[scope]
            .users
            .get(uid)
            .copied()
            .unwrap_or_default();
        Some(UserStats {
            tickets_opened: opened.max(0) as u64,
            tickets_closed: closed.max(0) as u64,
            helper: self.is_helper(slack_id),
        })
    }

    /// Every live ticket, in id order (for tests and snapshots).
    pub fn all_tickets(&self) -> impl Iterator<Item = &Ticket> {
        self.tickets.iter().flatten()
    }

    /// The current helpers' Slack ids (the bot's own user excluded).
    pub fn helpers(&self) -> Vec<String> {
        let mut h: Vec<String> = self
            .helpers
            .iter()
            .filter(|h| self.is_helper(h))
            .cloned()
            .collect();
        h.sort();
        h
    }

    /// Slack id of a user id.
    pub fn slack_id(&self, u: UserId) -> Option<&str> {
        self.users
            .get((u.0 as usize).checked_sub(1)?)
            .map(String::as_str)
    }

    /// The id of the helper channel at `ix`.
    pub fn channel_name(&self, ix: u16) -> &str {
        &self.config.help_channels[ix as usize]
    }
}

fn unanswered(t: &Ticket) -> bool {
    t.status == Status::Open && t.last_msg_by != LastBy::Helper
}

fn credited_other(t: &Ticket) -> Option<UserId> {
    t.closed_by.filter(|c| *c != t.opened_by)
}

fn field_values(t: &Ticket) -> [Option<Micros>; 3] {
    [Some(t.created_at), t.closed_at, t.assigned_at]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Message;

    fn config(channels: &[&str]) -> Config {
        Config {
            help_channels: channels.iter().map(|c| c.to_string()).collect(),
            ..Config::default()
        }
    }

    fn ask(channel: &str, ts: &str) -> Delivery {
        Delivery {
            event_id: None,
            time: Micros::from_slack_ts(ts).unwrap(),
            bot_user: None,
            event: Event::Message(Message {
                channel: channel.into(),
                ts: ts.into(),
                at: Micros::from_slack_ts(ts).unwrap(),
                thread_ts: None,
                user: Some("U1".into()),
                bot: false,
                subtype: None,
                text: "help".into(),
            }),
        }
    }

    #[test]
    fn restore_follows_channels_by_name_and_refuses_a_dropped_one() {
        let mut e = Engine::new(config(&["CA", "CB"]));
        e.apply(&ask("CB", "1767225600.000001"));
        let reordered = Engine::restore(config(&["CC", "CB", "CA"]), e.persisted()).unwrap();
        assert_eq!(reordered.ticket(1, 2).map(|t| t.channel), Some("CB".into()));
        assert!(reordered.ticket(1, 1).is_none());
        let err = Engine::restore(config(&["CA"]), e.persisted()).unwrap_err();
        assert!(err.to_string().contains("CB"), "{err}");
    }
}
