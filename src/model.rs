//! The core's vocabulary: tickets, users, configuration and the events it consumes.

use crate::time::Micros;
use serde::{Deserialize, Serialize};

/// A ticket's sequential id (≥ 1, never reused).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct TicketId(pub u64);

/// A user's sequential id (≥ 1, in order of first appearance).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct UserId(pub u32);

/// Where a ticket is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Asked, not (or no longer) assigned to a helper's work.
    Open,
    /// A helper has answered.
    InProgress,
    /// Resolved.
    Closed,
}

impl Status {
    /// Every status, in index order.
    pub const ALL: [Status; 3] = [Status::Open, Status::InProgress, Status::Closed];

    /// A dense index (0..3) for per-status tables.
    pub fn index(self) -> usize {
        match self {
            Status::Open => 0,
            Status::InProgress => 1,
            Status::Closed => 2,
        }
    }

    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::InProgress => "in_progress",
            Status::Closed => "closed",
        }
    }

    /// Parses the API spelling, case-insensitively.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }
}

/// Who sent the latest counted message in a ticket's thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LastBy {
    /// The opener.
    Author,
    /// A helper.
    Helper,
    /// Anybody else.
    Other,
}

/// One support question and everything the lifecycle rules record about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    /// Sequential id.
    pub id: TicketId,
    /// Index of the help channel in the configuration.
    pub channel: u16,
    /// The top-level message's `ts`, verbatim.
    pub message_ts: String,
    /// Readable first line of the text.
    pub title: String,
    /// The top-level message's text.
    pub description: String,
    /// Current status.
    pub status: Status,
    /// The opener.
    pub opened_by: UserId,
    /// The helper who last took it.
    pub assigned_to: Option<UserId>,
    /// Who is credited with the resolution.
    pub closed_by: Option<UserId>,
    /// Who reopened it last.
    pub reopened_by: Option<UserId>,
    /// The top-level message's time.
    pub created_at: Micros,
    /// The first helper reply's time.
    pub assigned_at: Option<Micros>,
    /// The resolution's time.
    pub closed_at: Option<Micros>,
    /// The last reopen's time.
    pub reopened_at: Option<Micros>,
    /// Time of the latest counted message.
    pub last_msg_at: Micros,
    /// Sender of the latest counted message.
    pub last_msg_by: LastBy,
    /// Tags added with `?tag`.
    pub tags: Vec<String>,
    /// Whether anyone but the opener ever sent a counted reply (R7).
    pub others_replied: bool,
}

/// What the engine is told at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Watched help channels; each top-level message in one is a ticket.
    pub help_channels: Vec<String>,
    /// The team channel whose members are helpers.
    pub team_channel: Option<String>,
    /// Initial helper Slack ids.
    pub helpers: Vec<String>,
    /// Slack user ids of bots allowed to resolve and reopen.
    pub trusted_bots: Vec<String>,
    /// Macro names that resolve, besides `resolve` and `close`.
    pub resolving_macros: Vec<String>,
    /// The reaction name that resolves a ticket.
    pub resolution_reaction: String,
    /// Close tickets idle this many days (R10); `None` disables.
    pub stale_after_days: Option<u32>,
    /// Workspace subdomain for ticket links.
    pub workspace: String,
    /// The bot's own Slack user id, when known.
    pub bot_user: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            help_channels: Vec::new(),
            team_channel: None,
            helpers: Vec::new(),
            trusted_bots: Vec::new(),
            resolving_macros: DEFAULT_RESOLVING_MACROS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            resolution_reaction: "white_check_mark".into(),
            stale_after_days: None,
            workspace: "hackclub".into(),
            bot_user: None,
        }
    }
}

/// The resolving macros Nephthys ships with.
pub const DEFAULT_RESOLVING_MACROS: [&str; 6] = [
    "faq",
    "identity",
    "fraud",
    "shipwrights",
    "hackatime",
    "thread",
];

/// One Slack delivery, decoded into what the lifecycle needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Slack's `event_id`, for deduplication; `None` for synthetic events.
    pub event_id: Option<String>,
    /// The delivery's time for the stale clock (R10).
    pub time: Micros,
    /// The bot's own user id, if the envelope's authorizations name it.
    pub bot_user: Option<String>,
    /// The event itself.
    pub event: Event,
}

/// The Slack events the lifecycle distinguishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A posted message (top-level or reply), any subtype but edits and deletions.
    Message(Message),
    /// `message_changed`: an edit, or a tombstone for a deleted message with replies.
    MessageChanged {
        /// The channel.
        channel: String,
        /// The changed message's `ts`.
        ts: String,
        /// The new text.
        text: String,
        /// The editor.
        user: Option<String>,
        /// Whether the new message is a tombstone.
        tombstone: bool,
    },
    /// `message_deleted` of the message with this `ts`.
    MessageDeleted {
        /// The channel.
        channel: String,
        /// The deleted message's `ts`.
        deleted_ts: String,
    },
    /// `reaction_added` (or removed) on a message.
    Reaction {
        /// Added (true) or removed (false).
        added: bool,
        /// The reacting user.
        user: String,
        /// The reaction's name.
        reaction: String,
        /// Channel of the reacted message.
        channel: String,
        /// `ts` of the reacted message.
        item_ts: String,
        /// The event's time.
        at: Micros,
    },
    /// `member_joined_channel` (or left).
    Member {
        /// Joined (true) or left (false).
        joined: bool,
        /// The member.
        user: String,
        /// The channel.
        channel: String,
    },
    /// Any other event type, ignored.
    Other {
        /// The event's `type`.
        kind: String,
    },
}

/// A posted message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The channel.
    pub channel: String,
    /// The message's `ts`, verbatim.
    pub ts: String,
    /// The message's time.
    pub at: Micros,
    /// The thread's parent `ts`, if in a thread.
    pub thread_ts: Option<String>,
    /// The sender.
    pub user: Option<String>,
    /// Whether a bot sent it (`bot_id` present or subtype `bot_message`).
    pub bot: bool,
    /// The subtype, if any.
    pub subtype: Option<String>,
    /// The text.
    pub text: String,
}

impl Event {
    /// A short name for metrics and logs.
    pub fn kind(&self) -> &str {
        match self {
            Event::Message(_) => "message",
            Event::MessageChanged { .. } => "message_changed",
            Event::MessageDeleted { .. } => "message_deleted",
            Event::Reaction { added: true, .. } => "reaction_added",
            Event::Reaction { added: false, .. } => "reaction_removed",
            Event::Member { joined: true, .. } => "member_joined_channel",
            Event::Member { joined: false, .. } => "member_left_channel",
            Event::Other { kind } => kind,
        }
    }
}
