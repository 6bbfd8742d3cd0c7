//! What functions use: per-function counters per UTC day (runs, failures, fuel, wall and CPU
//! time, host calls), added in the commit of each invocation record without being read (so
//! concurrent runs never conflict), and the daily quotas that pause a function when spent.

use super::Result;
use super::{check_name, dispatch, DailyQuota, DailyUsage, Functions, FunctionsError, Invocation};
use crate::auth::Principal;
use crate::store::{KvWrite, Space};
use std::time::{Duration, SystemTime};

/// The measures counted per day, in the order of [`DailyUsage`]'s fields.
const MEASURES: [&str; 7] = [
    "invocations",
    "failures",
    "fuel",
    "wall_us",
    "cpu_us",
    "host_calls",
    "fetch_bytes",
];

/// The most days a usage report covers.
const MAX_DAYS: usize = 366;

fn day_prefix(name: &str, day: &str) -> Vec<u8> {
    let mut key = dispatch::function_prefix(name);
    key.extend_from_slice(day.as_bytes());
    key.push(0);
    key
}

/// Adds a run's usage to its function's counters of the run's day.
pub(super) fn count(write: KvWrite, name: &str, record: &Invocation) -> KvWrite {
    let day = record.at.get(..10).unwrap_or("0000-00-00");
    add(write, name, day, &Measures::of(record))
}

/// Sums of the measures of runs, in the order of [`MEASURES`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Measures([u64; 7]);

impl Measures {
    pub(super) fn of(record: &Invocation) -> Measures {
        Measures([
            1,
            u64::from(record.status != "ok"),
            record.fuel,
            record.duration_us,
            record.cpu_us,
            u64::from(record.host_calls),
            record.fetch_bytes,
        ])
    }

    pub(super) fn add(&mut self, other: &Measures) {
        for (sum, value) in self.0.iter_mut().zip(other.0) {
            *sum = sum.saturating_add(value);
        }
    }
}

/// Adds `measures` to a function's counters of `day`.
pub(super) fn add(mut write: KvWrite, name: &str, day: &str, measures: &Measures) -> KvWrite {
    for (measure, value) in MEASURES.iter().zip(measures.0) {
        if value > 0 {
            let mut key = day_prefix(name, day);
            key.extend_from_slice(measure.as_bytes());
            write = write.add(Space::FunctionUsage, key, value.min(i64::MAX as u64) as i64);
        }
    }
    write
}

/// A function's usage per day and its quota.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    /// Newest day first; days without runs are left out.
    pub days: Vec<DailyUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_quota: Option<DailyQuota>,
    /// When the function is paused by its quota: until when (the end of the UTC day).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<String>,
}

/// Today's UTC date and the end of it.
fn today() -> (String, SystemTime) {
    let now = time::OffsetDateTime::now_utc();
    let day = now.date();
    let end = day
        .next_day()
        .map(|d| d.midnight().assume_utc())
        .unwrap_or(now + Duration::from_secs(86_400));
    let until = SystemTime::UNIX_EPOCH + Duration::from_secs(end.unix_timestamp().max(0) as u64);
    (day.to_string(), until)
}

impl Functions {
    /// A function's usage per UTC day, over the last `days` days, with its quota and whether
    /// it is paused.
    pub async fn usage(&self, who: &Principal, name: &str, days: usize) -> Result<UsageReport> {
        Self::require_admin(who)?;
        check_name(name)?;
        let loaded = self
            .loaded(name)
            .ok_or_else(|| FunctionsError::NotFound(name.into()))?;
        if !(1..=MAX_DAYS).contains(&days) {
            return Err(FunctionsError::BadRequest(format!(
                "days must be 1 to {MAX_DAYS}"
            )));
        }
        let rows = self
            .inner
            .store
            .kv_prefix_last(
                Space::FunctionUsage,
                &dispatch::function_prefix(name),
                days * MEASURES.len(),
            )
            .await?;
        let skip = dispatch::function_prefix(name).len();
        let mut report: Vec<DailyUsage> = Vec::new();
        for (key, bytes) in rows {
            let rest = String::from_utf8_lossy(key.get(skip..).unwrap_or_default()).into_owned();
            let Some((day, measure)) = rest.split_once('\0') else {
                continue;
            };
            let value = crate::engine::counter(Some(&bytes)).unwrap_or(0).max(0) as u64;
            if report.last().is_none_or(|d| d.day != day) {
                if report.len() == days {
                    break;
                }
                report.push(DailyUsage {
                    day: day.to_string(),
                    ..DailyUsage::default()
                });
            }
            if let Some(d) = report.last_mut() {
                match measure {
                    "invocations" => d.invocations = value,
                    "failures" => d.failures = value,
                    "fuel" => d.fuel = value,
                    "wall_us" => d.wall_us = value,
                    "cpu_us" => d.cpu_us = value,
                    "host_calls" => d.host_calls = value,
                    "fetch_bytes" => d.fetch_bytes = value,
                    _ => {}
                }
            }
        }
        let quota = loaded.record.info.config.daily_quota.clone();
        let paused_until = match &quota {
            Some(quota) => self.quota_spent(name, quota).await?,
            None => None,
        };
        Ok(UsageReport {
            days: report,
            daily_quota: quota,
            paused_until: paused_until
                .map(|t| crate::model::format_time(time::OffsetDateTime::from(t))),
        })
    }

    /// When a function's `quota` for today is spent: until when it is paused.
    pub(super) async fn quota_spent(
        &self,
        name: &str,
        quota: &DailyQuota,
    ) -> Result<Option<SystemTime>> {
        Ok(self.quota_left(name, quota, 0).await?.err())
    }

    /// What a function's `quota` leaves today, with `running` runs not counted yet: how many
    /// more may start (`None`: no limit on runs), or, when it is spent, until when it is paused.
    /// Fuel and CPU are counted as runs end, so runs in flight may go a little over them.
    pub(super) async fn quota_left(
        &self,
        name: &str,
        quota: &DailyQuota,
        running: u64,
    ) -> Result<std::result::Result<Option<u64>, SystemTime>> {
        let (day, until) = today();
        let rows = self
            .inner
            .store
            .kv_prefix(
                Space::FunctionUsage,
                &day_prefix(name, &day),
                MEASURES.len(),
            )
            .await?;
        let prefix = day_prefix(name, &day).len();
        let used = |measure: &str| {
            rows.iter()
                .find(|(key, _)| key.get(prefix..) == Some(measure.as_bytes()))
                .map_or(0, |(_, bytes)| {
                    crate::engine::counter(Some(bytes)).unwrap_or(0).max(0) as u64
                })
        };
        let runs = quota
            .invocations
            .map(|n| n.saturating_sub(used("invocations") + running));
        let spent = runs == Some(0)
            || quota.fuel.is_some_and(|n| used("fuel") >= n)
            || quota
                .cpu_ms
                .is_some_and(|ms| used("cpu_us") >= ms.saturating_mul(1000));
        Ok(if spent { Err(until) } else { Ok(runs) })
    }
}
