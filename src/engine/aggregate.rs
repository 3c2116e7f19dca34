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
/// second histogram with the same buckets: the live count of a bucket is
/// `added − removed`. Beside them, a signed total per HdrHistogram bucket (one
/// per power of two) lets a percentile read find the right power of two in
/// at most 64 steps and then walk only its 128 sub-buckets: O(1) to record,
/// O(1) (a few hundred counter reads, no allocation) to read. The answer is
/// cached until the next change, so a read of an unchanged window is free.
#[derive(Debug, Clone)]
pub struct Dist {
    added: Histogram<u64>,
    removed: Histogram<u64>,
    /// Live values per power-of-two group (see [`group_of`]).
    groups: [i64; 64],
    live: i64,
    /// The last answer, until the next `add`.
    cached: Option<Option<Percentiles>>,
}

/// Two significant digits: bucket width ≤ 1/128 of the value, so the
/// bucket's midpoint is within 0.4% of any value in it.
const SIGFIG: u8 = 2;
/// Values below this are their own bucket at two significant digits.
const EXACT_BELOW: u64 = 256;

/// HdrHistogram's bucket for `v` at two significant digits: 0 for `[0, 256)`,
/// then `b` for `[2^(b+7), 2^(b+8))`.
fn group_of(v: u64) -> usize {
    if v < EXACT_BELOW {
        0
    } else {
        (63 - v.leading_zeros() as usize) - 7
    }
}

fn group_start(g: usize) -> u64 {
    if g == 0 {
        0
    } else {
        1u64.checked_shl((g + 7) as u32).unwrap_or(u64::MAX)
    }
}

impl Default for Dist {
    fn default() -> Self {
        let new = || Histogram::new(SIGFIG).expect("2 significant digits is a valid histogram");
        Dist {
            added: new(),
            removed: new(),
            groups: [0; 64],
            live: 0,
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
        // `record` grows the auto-resizing histogram; `saturating_record` never would.
        if h.record(v).is_err() {
            h.saturating_record(v);
        }
        self.groups[group_of(v)] += sign;
        self.live += sign;
        self.cached = None;
    }

    /// Live count of the bucket holding `v`.
    fn count_at(&self, v: u64) -> i64 {
        // `count_at` answers the last bucket's count beyond a histogram's range.
        let at = |h: &Histogram<u64>| {
            if h.is_empty() || v > h.max() {
                0
            } else {
                h.count_at(v) as i64
            }
        };
        at(&self.added) - at(&self.removed)
    }

    /// The bucket midpoints of the values of the given ascending ranks (1-based),
    /// in one walk: skip whole powers of two by their totals, then step through
    /// the sub-buckets of the groups that hold a wanted rank.
    fn values_of_ranks<const N: usize>(&self, ranks: [i64; N]) -> [u64; N] {
        let mut out = [self.added.max(); N];
        let mut found = 0;
        let mut before = 0i64;
        for (g, n) in self.groups.iter().enumerate() {
            if found == N {
                break;
            }
            if before + n < ranks[found] {
                before += n;
                continue;
            }
            let end = group_start(g + 1);
            let mut v = group_start(g);
            while v < end && found < N {
                before += self.count_at(v);
                while found < N && before >= ranks[found] {
                    out[found] = self.added.median_equivalent(v);
                    found += 1;
                }
                v = self.added.next_non_equivalent(v);
            }
        }
        out
    }

    /// Nearest-rank p50/p90/p99, each the midpoint of the bucket holding the exact value.
    pub fn percentiles(&mut self) -> Option<Percentiles> {
        if let Some(p) = self.cached {
            return p;
        }
        let p = (self.live > 0).then(|| {
            // The smallest v with at least X% of values ≤ v is the value of rank ceil(X·n/100).
            let ranks = [50i64, 90, 99].map(|x| ((x * self.live + 99) / 100).max(1));
            let [p50, p90, p99] = self
                .values_of_ranks(ranks)
                .map(|v| v as f64 / MICROS_PER_MINUTE);
            Percentiles { p50, p90, p99 }
        });
        self.cached = Some(p);
        p
    }
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
        self.edge_part(t, mask, sign);
        if mask & IN_CREATED != 0 {
            self.created_part(t, sign);
        }
    }

    /// Moves a ticket from one mask to another as a window slides over it. When
    /// `created_at` stays on the same side, the means and distributions (which
    /// depend only on it) are left alone rather than removed and re-added.
    pub fn remask(&mut self, t: &Ticket, old: u8, new: u8) {
        if (old ^ new) & IN_CREATED != 0 {
            self.contribute(t, old, -1);
            self.contribute(t, new, 1);
        } else {
            self.edge_part(t, old, -1);
            self.edge_part(t, new, 1);
        }
    }

    /// What depends on `closed_at` / `assigned_at` being in the window.
    fn edge_part(&mut self, t: &Ticket, mask: u8, sign: i64) {
        if t.status == Status::Closed && mask & IN_CLOSED != 0 {
            self.closed_in += sign;
            if mask & IN_CREATED != 0 {
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
    }

    /// What depends only on `created_at` being in the window.
    fn created_part(&mut self, t: &Ticket, sign: i64) {
        let closed = t.status == Status::Closed;
        self.new_total += sign;
        self.new_by_status[t.status.index()] += sign;
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
