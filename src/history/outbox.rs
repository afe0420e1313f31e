//! The notification outbox's SQL: each job's failure streak, and one row per notice and
//! channel, written in the transaction of the run's end that caused it and then moved through
//! `pending` → `delivered` or `failed` (or written `suppressed`) by the sender's attempts.

use std::collections::HashMap;

use rusqlite::{Connection, params};
use serde::Serialize;

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

pub fn apply(conn: &Connection, n: &Notified) -> rusqlite::Result<()> {
    if let Some((failures, told)) = n.streak {
        conn.prepare_cached(
            "INSERT INTO notify_streaks (job, failures, told) VALUES (?1, ?2, ?3)
             ON CONFLICT (job) DO UPDATE SET failures = excluded.failures, told = excluded.told",
        )?
        .execute(params![n.job, failures, told])?;
    }
    let at = ms(n.at);
    let mut insert = conn.prepare_cached(
        "INSERT INTO deliveries (job, channel, event, instance, slot_ms, body, created_ms, state, next_ms, done_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for d in &n.deliveries {
        let (state, next, done) = if d.suppressed {
            ("suppressed", None, Some(at))
        } else {
            ("pending", Some(at), None)
        };
        insert.execute(params![
            n.job,
            d.channel,
            d.event,
            d.instance,
            d.slot.map(ms),
            d.body,
            at,
            state,
            next,
            done
        ])?;
    }
    Ok(())
}

/// Every job's stored streak: `(failures in a row, someone was told)`.
pub fn streaks(conn: &Connection) -> rusqlite::Result<HashMap<String, (u32, bool)>> {
    let mut st = conn.prepare("SELECT job, failures, told FROM notify_streaks")?;
    st.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?
        .collect()
}

/// Pending deliveries due by `now_ms` (oldest first, at most `limit`, leaving out `busy`),
/// and when the next one not yet due is.
pub fn due(
    conn: &Connection,
    now_ms: i64,
    limit: usize,
    busy: &[i64],
) -> rusqlite::Result<(Vec<Due>, Option<i64>)> {
    let mut st = conn.prepare_cached(
        "SELECT id, job, channel, body, attempts FROM deliveries
         WHERE state = 'pending' AND next_ms <= ?1 ORDER BY next_ms, id LIMIT ?2",
    )?;
    // `busy` are few (the sends in flight): fetched past them rather than bound as a list.
    let rows = st
        .query_map(params![now_ms, (limit + busy.len()) as i64], |r| {
            Ok(Due {
                id: r.get(0)?,
                job: r.get(1)?,
                channel: r.get(2)?,
                body: r.get(3)?,
                attempts: r.get(4)?,
            })
        })?
        .filter(|d| d.as_ref().map_or(true, |d| !busy.contains(&d.id)))
        .take(limit)
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let next = conn
        .prepare_cached(
            "SELECT MIN(next_ms) FROM deliveries WHERE state = 'pending' AND next_ms > ?1",
        )?
        .query_row(params![now_ms], |r| r.get(0))?;
    Ok((rows, next))
}

/// Records one attempt at delivery `id`, made at `at_ms`.
pub fn attempted(
    conn: &Connection,
    id: i64,
    outcome: &Attempt,
    at_ms: i64,
) -> rusqlite::Result<()> {
    let (state, next, error, done) = match outcome {
        Attempt::Delivered => ("delivered", None, None, Some(at_ms)),
        Attempt::Retry { error, next_ms } => {
            ("pending", Some(*next_ms), Some(error.as_str()), None)
        }
        Attempt::Failed { error } => ("failed", None, Some(error.as_str()), Some(at_ms)),
    };
    conn.prepare_cached(
        "UPDATE deliveries SET state = ?2, attempts = attempts + 1, next_ms = ?3,
           last_error = COALESCE(?4, last_error), done_ms = ?5
         WHERE id = ?1 AND state = 'pending'",
    )?
    .execute(params![id, state, next, error, done])?;
    Ok(())
}

/// Deliveries newest first, of one job or all, before the id `before` (paging).
pub fn list(
    conn: &Connection,
    job: Option<&str>,
    before: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Vec<DeliveryRow>> {
    let mut st = conn.prepare_cached(
        "SELECT id, job, channel, event, instance, slot_ms, created_ms, state, attempts, next_ms, last_error, done_ms
         FROM deliveries WHERE (?1 IS NULL OR job = ?1) AND id < ?2 ORDER BY id DESC LIMIT ?3",
    )?;
    st.query_map(
        params![job, before.unwrap_or(i64::MAX), limit as i64],
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
    )?
    .collect()
}

/// Drops finished deliveries older than `cutoff_ms` (pending ones stay until they end).
pub fn prune(conn: &Connection, cutoff_ms: Option<i64>) -> rusqlite::Result<()> {
    if let Some(cutoff) = cutoff_ms {
        conn.execute(
            "DELETE FROM deliveries WHERE state <> 'pending' AND created_ms < ?1",
            params![cutoff],
        )?;
    }
    Ok(())
}
