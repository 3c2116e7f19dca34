//! Additive accumulators: every statistic is a sum of per-ticket contributions,
//! so a ticket's change is "subtract its old contribution, add its new one".

use crate::model::{Status, Ticket, UserId};
use crate::time::{Micros, MICROS_PER_MINUTE};
use hdrhistogram::Histogram;
use std::collections::HashMap;

/// Mask bit: `created_at` is in the window.
pub const IN_CREATED: u8 = 1;
/// Mask bit: `closed_at` is in the window.
pub const IN_CLOSED: u8 = 2;
/// Mask bit: `assigned_at` is in the window.
pub const IN_ASSIGNED: u8 = 4;
/// A ticket seen by the all-time aggregate: every field counts.
pub const ALL_TIME: u8 = IN_CREATED | IN_CLOSED | IN_ASSIGNED;

/// An exact mean: integer sum of microseconds and a count.
#[derive(Debug, Clone, Default)]
pub struct Mean {
    sum: i128,
    n: i64,
}

impl Mean {
    fn add(&mut self, micros: i64, sign: i64) {
        self.sum += i128::from(micros) * i128::from(sign);
        self.n += sign;
    }

    /// The mean in minutes, `None` when empty.
    pub fn minutes(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum as f64 / self.n as f64 / MICROS_PER_MINUTE)
    }
}

/// p50 / p90 / p99 in minutes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// A distribution of durations that supports removal.
///
/// HdrHistogram has no single-value removal, so removals are recorded in a
/// second histogram and subtracted when a percentile is asked for: recording
/// stays O(1) and a read costs O(buckets), independent of the ticket count.
#[derive(Debug, Clone)]
pub struct Dist {
    added: Histogram<u64>,
    removed: Histogram<u64>,
    cached: Option<Option<Percentiles>>,
}

/// Two significant digits: bucket width ≤ 1/128 of the value, so the
/// bucket's midpoint is within 0.4% of any value in it.
const SIGFIG: u8 = 2;

impl Default for Dist {
    fn default() -> Self {
        let new = || Histogram::new(SIGFIG).expect("2 significant digits is a valid histogram");
        Dist {
            added: new(),
            removed: new(),
            cached: None,
        }
    }
}

impl Dist {
    fn add(&mut self, micros: i64, sign: i64) {
        // Durations are non-negative for real Slack data (a reply's ts follows its
        // parent's); a negative one from a malformed stream is clamped to zero here.
        let v = micros.max(0) as u64;
        let h = if sign > 0 {
            &mut self.added
        } else {
            &mut self.removed
        };
        // `record` grows the auto-resizing histogram; `saturating_record` would
        // never resize and would clamp every value beyond the initial range.
        if h.record(v).is_err() {
            h.saturating_record(v);
        }
        self.cached = None;
    }

    /// Nearest-rank p50/p90/p99, each the midpoint of the bucket holding the exact value.
    pub fn percentiles(&mut self) -> Option<Percentiles> {
        if let Some(p) = self.cached {
            return p;
        }
        let mut live = self.added.clone();
        let p = if live.subtract(&self.removed).is_ok() {
            nearest_ranks(&live)
        } else {
            None
        };
        self.cached = Some(p);
        p
    }
}

fn nearest_ranks(h: &Histogram<u64>) -> Option<Percentiles> {
    let n = h.len();
    if n == 0 {
        return None;
    }
    // The smallest v with at least X% of values ≤ v is the value of rank ceil(X·n/100).
    let ranks = [50u64, 90, 99].map(|x| (x * n).div_ceil(100).max(1));
    let mut out = [0f64; 3];
    let mut found = 0;
    let mut cumulative = 0u64;
    for item in h.iter_recorded() {
        cumulative += item.count_since_last_iteration();
        while found < 3 && cumulative >= ranks[found] {
            let v = h.median_equivalent(item.value_iterated_to());
            out[found] = v as f64 / MICROS_PER_MINUTE;
            found += 1;
        }
        if found == 3 {
            break;
        }
    }
    Some(Percentiles {
        p50: out[0],
        p90: out[1],
        p99: out[2],
    })
}

/// The additive part of `TimeBoundStats` (or, with every mask bit set, of `OverallStats`).
#[derive(Debug, Clone, Default)]
pub struct Agg {
    /// Tickets created in the window.
    pub new_total: i64,
    /// Of those, by current status (indexed by `Status::index`).
    pub new_by_status: [i64; 3],
    /// Closed tickets with `closed_at` in the window.
    pub closed_in: i64,
    /// Of those, created in the window too.
    pub closed_from_in: i64,
    /// In-progress tickets with `assigned_at` in the window.
    pub assigned_in_progress: i64,
    /// Closes credited to each user with `closed_at` in the window.
    pub closers: HashMap<UserId, i64>,
    /// Hang time of created-in, assigned, not closed tickets.
    pub hang_unresolved: Mean,
    /// Hang time of created-in, assigned tickets.
    pub hang_all: Mean,
    /// Distribution of `hang_all`.
    pub hang_dist: Dist,
    /// Resolution time of created-in, closed tickets.
    pub resolution: Mean,
    /// Distribution of `resolution`.
    pub resolution_dist: Dist,
}

impl Agg {
    /// Adds (`sign` = 1) or removes (`sign` = -1) one ticket seen through `mask`.
    pub fn contribute(&mut self, t: &Ticket, mask: u8, sign: i64) {
        let created = mask & IN_CREATED != 0;
        let closed = t.status == Status::Closed;
        if created {
            self.new_total += sign;
            self.new_by_status[t.status.index()] += sign;
        }
        if closed && mask & IN_CLOSED != 0 {
            self.closed_in += sign;
            if created {
                self.closed_from_in += sign;
            }
            if let Some(u) = t.closed_by {
                let c = self.closers.entry(u).or_insert(0);
                *c += sign;
                if *c == 0 {
                    self.closers.remove(&u);
                }
            }
        }
        if t.status == Status::InProgress && mask & IN_ASSIGNED != 0 {
            self.assigned_in_progress += sign;
        }
        if !created {
            return;
        }
        if let Some(a) = t.assigned_at {
            let hang = a.0 - t.created_at.0;
            self.hang_all.add(hang, sign);
            self.hang_dist.add(hang, sign);
            if !closed {
                self.hang_unresolved.add(hang, sign);
            }
        }
        if let Some(c) = t.closed_at {
            let res = c.0 - t.created_at.0;
            self.resolution.add(res, sign);
            self.resolution_dist.add(res, sign);
        }
    }
}

/// The `/api/stats_v2` windows as (offset of the end, offset of the start) before `now`.
pub const WINDOWS: [(i64, i64); 4] = {
    use crate::time::DAY;
    [(0, DAY), (DAY, 2 * DAY), (0, 7 * DAY), (7 * DAY, 14 * DAY)]
};

/// The window `[now - start, now - end)` of `WINDOWS[w]`.
pub fn window_bounds(w: usize, now: Micros) -> (Micros, Micros) {
    let (end, start) = WINDOWS[w];
    (now.plus(-start), now.plus(-end))
}

/// Which of a ticket's timestamps fall in `[lo, hi)`.
pub fn mask_for(t: &Ticket, lo: Micros, hi: Micros) -> u8 {
    let inside = |f: Option<Micros>| f.is_some_and(|v| lo <= v && v < hi);
    let mut m = 0;
    if inside(Some(t.created_at)) {
        m |= IN_CREATED;
    }
    if inside(t.closed_at) {
        m |= IN_CLOSED;
    }
    if inside(t.assigned_at) {
        m |= IN_ASSIGNED;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_small_sets_are_exact() {
        let mut d = Dist::default();
        for v in [1i64, 2, 3, 4, 5, 6, 7, 8, 9, 10] {
            d.add(v, 1);
        }
        d.add(10, -1);
        let p = d.percentiles().unwrap();
        // values 1..=9: rank ceil(4.5)=5 -> 5; ceil(8.1)=9 -> 9; ceil(8.91)=9 -> 9
        assert_eq!(p.p50 * MICROS_PER_MINUTE, 5.0);
        assert_eq!(p.p90 * MICROS_PER_MINUTE, 9.0);
        assert_eq!(p.p99 * MICROS_PER_MINUTE, 9.0);
    }

    #[test]
    fn large_durations_are_recorded_not_clamped() {
        let mut d = Dist::default();
        let day = 86_400_000_000i64;
        for v in [day, 2 * day, 3 * day] {
            d.add(v, 1);
        }
        d.add(3 * day, -1);
        let p = d.percentiles().unwrap();
        // values {1 day, 2 days}: ranks 1, 2, 2 -> 1440 min, 2880 min, within 1%
        assert!((p.p50 - 1440.0).abs() <= 14.4, "{p:?}");
        assert!((p.p90 - 2880.0).abs() <= 28.8, "{p:?}");
        assert!((p.p99 - 2880.0).abs() <= 28.8, "{p:?}");
    }

    #[test]
    fn removing_everything_gives_none() {
        let mut d = Dist::default();
        d.add(600_000_000, 1);
        assert!(d.percentiles().is_some());
        d.add(600_000_000, -1);
        assert_eq!(d.percentiles(), None);
    }
}

#[cfg(test)]
mod big_values {
    use super::*;

    #[test]
    fn large_values_within_one_percent() {
        let mut d = Dist::default();
        for v in [60_000_000i64 * 5, 60_000_000 * 30, 60_000_000 * 90] {
            d.add(v, 1);
        }
        d.add(60_000_000 * 7, 1);
        d.add(60_000_000 * 7, -1);
        let p = d.percentiles().unwrap();
        assert!((p.p50 - 30.0).abs() / 30.0 < 0.01, "{p:?}");
        assert!((p.p99 - 90.0).abs() / 90.0 < 0.01, "{p:?}");
    }
}
