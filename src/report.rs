//! The API's answer shapes, field for field and in the spec's order.

use crate::engine::aggregate::Percentiles;
use serde::Serialize;

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRef {
    /// Seshat's user id.
    pub id: u32,
    /// Slack's user id.
    pub slack_id: String,
}

/// One leaderboard row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderEntry {
    /// Seshat's user id.
    pub id: u32,
    /// Slack's user id.
    pub slack_id: String,
    /// Tickets credited to them.
    pub count: u64,
}

/// The oldest ticket still waiting for a helper.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OldestTicket {
    /// Ticket id.
    pub id: u64,
    /// ISO 8601 creation time.
    pub created_at: String,
    /// Minutes since creation.
    pub age_minutes: f64,
    /// Link to the Slack message.
    pub link: String,
}

/// All-time statistics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OverallStats {
    /// Tickets (deleted excluded).
    pub tickets_total: u64,
    /// Open tickets.
    pub tickets_open: u64,
    /// In-progress tickets.
    pub tickets_in_progress: u64,
    /// Closed tickets.
    pub tickets_closed: u64,
    /// Closes per current helper.
    pub helpers_leaderboard: Vec<LeaderEntry>,
    /// Mean hang time of assigned, unresolved tickets.
    pub mean_hang_time_minutes_unresolved: Option<f64>,
    /// Mean hang time of assigned tickets.
    pub mean_hang_time_minutes_all: Option<f64>,
    /// Mean resolution time.
    pub mean_resolution_time_minutes: Option<f64>,
    /// The oldest unanswered open ticket.
    pub oldest_unanswered_ticket: Option<OldestTicket>,
    /// Hang-time percentiles.
    pub hang_time_minutes_percentiles: Option<Percentiles>,
    /// Resolution-time percentiles.
    pub resolution_time_minutes_percentiles: Option<Percentiles>,
}

/// Statistics of one time window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeBoundStats {
    /// Tickets created in the window.
    pub new_tickets_total: u64,
    /// Of those, closed now.
    pub new_tickets_now_closed: u64,
    /// Of those, open now.
    pub new_tickets_still_open: u64,
    /// Of those, in progress now.
    pub new_tickets_in_progress: u64,
    /// Closed tickets closed in the window.
    pub closed_today: u64,
    /// Of those, created in the window.
    pub closed_today_from_today: u64,
    /// In-progress tickets assigned in the window.
    pub assigned_today_in_progress: u64,
    /// Closes in the window per current helper.
    pub helpers_leaderboard: Vec<LeaderEntry>,
    /// Mean hang time, created in window, assigned, unresolved.
    pub mean_hang_time_minutes_unresolved: Option<f64>,
    /// Mean hang time, created in window, assigned.
    pub mean_hang_time_minutes_all: Option<f64>,
    /// Mean resolution time, created in window.
    pub mean_resolution_time_minutes: Option<f64>,
    /// Hang-time percentiles.
    pub hang_time_minutes_percentiles: Option<Percentiles>,
    /// Resolution-time percentiles.
    pub resolution_time_minutes_percentiles: Option<Percentiles>,
}

/// `/api/stats_v2`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsV2 {
    /// All time.
    pub all_time: OverallStats,
    /// [now − 24 h, now).
    pub past_24h: TimeBoundStats,
    /// [now − 48 h, now − 24 h).
    pub past_24h_previous: TimeBoundStats,
    /// [now − 7 d, now).
    pub past_7d: TimeBoundStats,
    /// [now − 14 d, now − 7 d).
    pub past_7d_previous: TimeBoundStats,
}

/// A ticket as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TicketView {
    /// Ticket id.
    pub id: u64,
    /// Readable first line.
    pub title: String,
    /// Full text (empty with `HIDE_DESCRIPTIONS`).
    pub description: String,
    /// `open` / `in_progress` / `closed`.
    pub status: &'static str,
    /// The opener.
    pub opened_by: Option<UserRef>,
    /// Credited resolver.
    pub closed_by: Option<UserRef>,
    /// Assigned helper.
    pub assigned_to: Option<UserRef>,
    /// Last reopener.
    pub reopened_by: Option<UserRef>,
    /// Tags.
    pub tags: Vec<String>,
    /// ISO 8601 creation time.
    pub created_at: String,
    /// The top-level message's `ts`.
    pub message_ts: String,
    /// Help channel id.
    pub channel: String,
    /// First helper reply time.
    pub assigned_at: Option<String>,
    /// Resolution time.
    pub closed_at: Option<String>,
    /// Last reopen time.
    pub reopened_at: Option<String>,
    /// Same list as `tags`, for later Nephthys clients.
    pub team_tags: Vec<String>,
}

/// `/api/user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserStats {
    /// Tickets they opened.
    pub tickets_opened: u64,
    /// Tickets credited to them that they did not open.
    pub tickets_closed: u64,
    /// Whether they are a helper now.
    pub helper: bool,
}

/// A row of the legacy `/api/stats` top-3 lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LegacyLeader {
    /// Seshat's user id.
    pub user_id: u32,
    /// Slack's user id.
    pub slack_id: String,
    /// Closes credited.
    pub closed_ticket_count: u64,
}

/// `/api/stats`, the older flat summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LegacyStats {
    /// All-time total.
    pub total_tickets: u64,
    /// All-time open.
    pub total_open: u64,
    /// All-time in progress.
    pub total_in_progress: u64,
    /// All-time closed.
    pub total_closed: u64,
    /// First three of the all-time leaderboard.
    pub total_top_3_users_with_closed_tickets: Vec<LegacyLeader>,
    /// All-time unresolved mean hang time.
    pub average_hang_time_minutes: Option<f64>,
    /// All-time mean resolution time.
    pub mean_resolution_time_minutes: Option<f64>,
    /// Age of the oldest unanswered ticket.
    pub oldest_unanswered_ticket_age_minutes: Option<f64>,
    /// Past-24h new tickets.
    pub prev_day_total: u64,
    /// Past-24h new, still open.
    pub prev_day_open: u64,
    /// Past-24h new, in progress.
    pub prev_day_in_progress: u64,
    /// Past-24h new, now closed.
    pub prev_day_closed: u64,
    /// First three of the past-24h leaderboard.
    pub prev_day_top_3_users_with_closed_tickets: Vec<LegacyLeader>,
    /// Past-24h unresolved mean hang time.
    pub prev_day_average_hang_time_minutes: Option<f64>,
    /// Past-24h mean hang time.
    pub prev_day_average_hang_time_all_minutes: Option<f64>,
    /// Past-24h mean resolution time.
    pub prev_day_mean_resolution_time_minutes: Option<f64>,
}

fn top3(board: &[LeaderEntry]) -> Vec<LegacyLeader> {
    board
        .iter()
        .take(3)
        .map(|e| LegacyLeader {
            user_id: e.id,
            slack_id: e.slack_id.clone(),
            closed_ticket_count: e.count,
        })
        .collect()
}

impl From<&StatsV2> for LegacyStats {
    fn from(s: &StatsV2) -> Self {
        let a = &s.all_time;
        let d = &s.past_24h;
        LegacyStats {
            total_tickets: a.tickets_total,
            total_open: a.tickets_open,
            total_in_progress: a.tickets_in_progress,
            total_closed: a.tickets_closed,
            total_top_3_users_with_closed_tickets: top3(&a.helpers_leaderboard),
            average_hang_time_minutes: a.mean_hang_time_minutes_unresolved,
            mean_resolution_time_minutes: a.mean_resolution_time_minutes,
            oldest_unanswered_ticket_age_minutes: a
                .oldest_unanswered_ticket
                .as_ref()
                .map(|o| o.age_minutes),
            prev_day_total: d.new_tickets_total,
            prev_day_open: d.new_tickets_still_open,
            prev_day_in_progress: d.new_tickets_in_progress,
            prev_day_closed: d.new_tickets_now_closed,
            prev_day_top_3_users_with_closed_tickets: top3(&d.helpers_leaderboard),
            prev_day_average_hang_time_minutes: d.mean_hang_time_minutes_unresolved,
            prev_day_average_hang_time_all_minutes: d.mean_hang_time_minutes_all,
            prev_day_mean_resolution_time_minutes: d.mean_resolution_time_minutes,
        }
    }
}
