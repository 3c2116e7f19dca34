//! Per-hour and per-day buckets for `/api/stats/timeseries`, kept incrementally
//! so that a query costs O(buckets asked for), never O(tickets).

use crate::model::{Status, Ticket};
use crate::time::{Micros, MICROS_PER_MINUTE};
use serde::Serialize;
use std::collections::BTreeMap;

/// Bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// One hour.
    Hour,
    /// One UTC day.
    Day,
}

impl Width {
    /// Microseconds in one bucket.
    pub fn micros(self) -> i64 {
        match self {
            Width::Hour => crate::time::HOUR,
            Width::Day => crate::time::DAY,
        }
    }

    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Width::Hour => "hour",
            Width::Day => "day",
        }
    }

    /// Parses `hour` / `day`.
    pub fn parse(s: &str) -> Option<Width> {
        match s {
            "hour" => Some(Width::Hour),
            "day" => Some(Width::Day),
            _ => None,
        }
    }

    /// Start of the bucket holding `t`.
    pub fn floor(self, t: Micros) -> i64 {
        t.0.div_euclid(self.micros()) * self.micros()
    }
}

/// Additive counts of one bucket, plus the sorted hang times that began there.
#[derive(Debug, Clone, Default)]
struct Bucket {
    created: i64,
    closed: i64,
    responded: i64,
    hang_sum: i128,
    /// Hang times (µs) of tickets first answered in this bucket, sorted.
    hangs: Vec<i64>,
}

impl Bucket {
    fn is_empty(&self) -> bool {
        self.created == 0 && self.closed == 0 && self.responded == 0 && self.hangs.is_empty()
    }
}

/// One row of the answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// ISO 8601 start of the bucket.
    pub start: String,
    /// Tickets created in the bucket.
    pub created: u64,
    /// Closed tickets whose `closed_at` is in the bucket.
    pub closed: u64,
    /// Tickets whose first helper reply (`assigned_at`) is in the bucket.
    pub first_responded: u64,
    /// Mean hang time of those first responses.
    pub mean_hang_time_minutes: Option<f64>,
    /// Nearest-rank p90 of those hang times.
    pub p90_hang_time_minutes: Option<f64>,
}

/// Hour and day buckets for one scope.
#[derive(Debug, Default)]
pub struct Series {
    hours: BTreeMap<i64, Bucket>,
    days: BTreeMap<i64, Bucket>,
}

impl Series {
    fn each(&mut self, at: Micros, f: &mut dyn FnMut(&mut Bucket)) {
        for (width, map) in [(Width::Hour, &mut self.hours), (Width::Day, &mut self.days)] {
            let key = width.floor(at);
            let b = map.entry(key).or_default();
            f(b);
            if b.is_empty() {
                map.remove(&key);
            }
        }
    }

    /// Adds (`sign` = 1) or removes (-1) a ticket's created / closed / responded counts.
    pub fn counts(&mut self, t: &Ticket, sign: i64) {
        self.each(t.created_at, &mut |b| b.created += sign);
        if let (Status::Closed, Some(c)) = (t.status, t.closed_at) {
            self.each(c, &mut |b| b.closed += sign);
        }
        if let Some(a) = t.assigned_at {
            self.each(a, &mut |b| b.responded += sign);
        }
    }

    /// Adds or removes a ticket's hang time (kept apart: it changes only with
    /// `created_at` / `assigned_at`, and costs a sorted insert).
    pub fn hang(&mut self, t: &Ticket, sign: i64) {
        let Some(a) = t.assigned_at else { return };
        let hang = a.0 - t.created_at.0;
        self.each(a, &mut |b| {
            b.hang_sum += i128::from(hang) * i128::from(sign);
            let pos = b.hangs.partition_point(|v| *v < hang);
            if sign > 0 {
                b.hangs.insert(pos, hang);
            } else if b.hangs.get(pos) == Some(&hang) {
                b.hangs.remove(pos);
            }
        });
    }

    /// Every bucket from the one holding `since` up to (excluding) `until`, empty ones included.
    pub fn points(&self, width: Width, since: Micros, until: Micros) -> Vec<Point> {
        let map = match width {
            Width::Hour => &self.hours,
            Width::Day => &self.days,
        };
        let mut out = Vec::new();
        let mut start = width.floor(since);
        while start < until.0 {
            let b = map.get(&start);
            let n = b.map_or(0, |b| b.responded);
            out.push(Point {
                start: Micros(start).to_iso(),
                created: b.map_or(0, |b| b.created) as u64,
                closed: b.map_or(0, |b| b.closed) as u64,
                first_responded: n as u64,
                mean_hang_time_minutes: b
                    .filter(|_| n > 0)
                    .map(|b| b.hang_sum as f64 / n as f64 / MICROS_PER_MINUTE),
                p90_hang_time_minutes: b.filter(|b| !b.hangs.is_empty()).map(|b| {
                    let rank = (9 * b.hangs.len()).div_ceil(10).max(1);
                    b.hangs[rank - 1] as f64 / MICROS_PER_MINUTE
                }),
            });
            start += width.micros();
        }
        out
    }
}
