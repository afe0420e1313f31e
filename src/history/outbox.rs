//! The notification outbox's SQL: each job's failure streak, and one row per notice and
//! channel, written in the transaction of the run's end that caused it and then moved through
//! `pending` → `delivered` or `failed` (or written `suppressed`) by the sender's attempts.

use std::collections::HashMap;

use serde::Serialize;

use super::db::{Db, DbError, p};
use super::{iso, ms};
use crate::journal::Notified;

/// A delivery to attempt now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub id: i64,
    pub job: String,
    pub channel: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// What became of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// Failed; tried again at `next_ms`.
    Retry {
        error: String,
        next_ms: i64,
    },
    /// Failed for good.
    Failed {
        error: String,
    },
}

/// A delivery as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeliveryRow {
    pub id: i64,
    pub job: String,
    pub channel: String,
    pub event: String,
    pub instance: Option<String>,
    pub slot: Option<String>,
    pub created_at: Option<String>,
    /// `pending`, `delivered`, `failed` or `suppressed`.
    pub state: String,
    pub attempts: i64,
    /// When a pending one is tried again.
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    /// When it was delivered or given up.
    pub done_at: Option<String>,
}

/// An outbox time (ms) as RFC 3339, for logs.
pub fn when(ms: i64) -> String {
    iso(Some(ms)).unwrap_or_default()
}

pub fn apply(db: &Db, n: &Notified) -> Result<(), DbError> {
    if let Some((failures, told)) = n.streak {
        db.exec(
            "INSERT INTO notify_streaks (job, failures, told) VALUES (?1, ?2, ?3)
             ON CONFLICT (job) DO UPDATE SET failures = excluded.failures, told = excluded.told",
            p![&n.job, failures, told],
        )?;
    }
    let at = ms(n.at);
    for d in &n.deliveries {
        let (state, next, done) = if d.suppressed {
            ("suppressed", None, Some(at))
        } else {
            ("pending", Some(at), None)
        };
        db.exec(
            "INSERT INTO deliveries (job, channel, event, instance, slot_ms, body, created_ms, state, next_ms, done_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            p![
                &n.job,
                &d.channel,
                &d.event,
                d.instance.as_deref(),
                d.slot.map(ms),
                &d.body,
                at,
                state,
                next,
                done
            ],
        )?;
    }
    Ok(())
}

/// Every job's stored streak: `(failures in a row, someone was told)`.
pub fn streaks(db: &Db) -> Result<HashMap<String, (u32, bool)>, DbError> {
    let rows = db.query(
        "SELECT job, failures, told FROM notify_streaks",
        p![],
        |r| Ok((r.get::<String>(0)?, (r.get::<u32>(1)?, r.get::<bool>(2)?))),
    )?;
    Ok(rows.into_iter().collect())
}

/// Pending deliveries due by `now_ms` (oldest first, at most `limit`, leaving out `busy`),
/// and when the next one not yet due is.
pub fn due(
    db: &Db,
    now_ms: i64,
    limit: usize,
    busy: &[i64],
) -> Result<(Vec<Due>, Option<i64>), DbError> {
    // `busy` are few (the sends in flight): fetched past them rather than bound as a list.
    let rows = db
        .query(
            "SELECT id, job, channel, body, attempts FROM deliveries
             WHERE state = 'pending' AND next_ms <= ?1 ORDER BY next_ms, id LIMIT ?2",
            p![
                now_ms,
                limit.saturating_add(busy.len()).min(i64::MAX as usize) as i64
            ],
            |r| {
                Ok(Due {
                    id: r.get(0)?,
                    job: r.get(1)?,
                    channel: r.get(2)?,
                    body: r.get(3)?,
                    attempts: r.get(4)?,
                })
            },
        )?
        .into_iter()
        .filter(|d| !busy.contains(&d.id))
        .take(limit)
        .collect();
    let next = db
        .row(
            "SELECT MIN(next_ms) FROM deliveries WHERE state = 'pending' AND next_ms > ?1",
            p![now_ms],
            |r| r.get::<Option<i64>>(0),
        )?
        .flatten();
    Ok((rows, next))
}

/// Records one attempt at delivery `id`, made at `at_ms`.
pub fn attempted(db: &Db, id: i64, outcome: &Attempt, at_ms: i64) -> Result<(), DbError> {
    let (state, next, error, done) = match outcome {
        Attempt::Delivered => ("delivered", None, None, Some(at_ms)),
        Attempt::Retry { error, next_ms } => {
            ("pending", Some(*next_ms), Some(error.as_str()), None)
        }
        Attempt::Failed { error } => ("failed", None, Some(error.as_str()), Some(at_ms)),
    };
    db.exec(
        "UPDATE deliveries SET state = ?2, attempts = attempts + 1, next_ms = ?3,
           last_error = COALESCE(?4, last_error), done_ms = ?5
         WHERE id = ?1 AND state = 'pending'",
        p![id, state, next, error, done],
    )?;
    Ok(())
}

/// Deliveries newest first, of one job or all, before the id `before` (paging).
pub fn list(
    db: &Db,
    job: Option<&str>,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<DeliveryRow>, DbError> {
    db.query(
        "SELECT id, job, channel, event, instance, slot_ms, created_ms, state, attempts, next_ms, last_error, done_ms
         FROM deliveries WHERE (CAST(?1 AS TEXT) IS NULL OR job = ?1) AND id < ?2 ORDER BY id DESC LIMIT ?3",
        p![job, before.unwrap_or(i64::MAX), limit.min(i64::MAX as usize) as i64],
        |r| {
            let state: String = r.get(7)?;
            let next: Option<i64> = r.get(9)?;
            Ok(DeliveryRow {
                id: r.get(0)?,
                job: r.get(1)?,
                channel: r.get(2)?,
                event: r.get(3)?,
                instance: r.get(4)?,
                slot: iso(r.get(5)?),
                created_at: iso(Some(r.get(6)?)),
                next_attempt_at: if state == "pending" { iso(next) } else { None },
                state,
                attempts: r.get(8)?,
                last_error: r.get(10)?,
                done_at: iso(r.get(11)?),
            })
        },
    )
}

/// Drops finished deliveries older than `cutoff_ms` (pending ones stay until they end).
pub fn prune(db: &Db, cutoff_ms: Option<i64>) -> Result<(), DbError> {
    if let Some(cutoff) = cutoff_ms {
        db.exec(
            "DELETE FROM deliveries WHERE state <> 'pending' AND created_ms < ?1",
            p![cutoff],
        )?;
    }
    Ok(())
}
