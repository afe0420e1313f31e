//! The fire ledger's SQL: one row per `(job, slot)` under a unique key, claimed before
//! anything is published, so a second claim of a slot is refused by the database, not by
//! anyone's memory. Manual runs are rows too (no slot); a gap of missed slots is one row.

use std::collections::HashMap;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{iso, ms};
use crate::journal::{Claim, MissReason, Notified, SkipReason, SlotFate};

/// Whoever claimed a slot first, as its row says (the answer to a refused claim).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    pub state: String,
    pub instance: Option<String>,
    pub claimed_by: String,
    pub claimed_at: Option<String>,
}

/// A claim's answer: the row is ours, or the slot was already claimed.
pub type ClaimResult = Result<(), Taken>;

/// A ledger row as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SlotRow {
    pub id: i64,
    pub job: String,
    /// The scheduled second (the first of a missed gap); `None` for a manual run.
    pub slot: Option<String>,
    /// The last slot of a missed gap.
    pub last: Option<String>,
    pub count: i64,
    /// `fired`, `skipped` or `missed`.
    pub state: String,
    pub reason: Option<String>,
    pub detail: String,
    pub trigger: String,
    pub instance: Option<String>,
    pub claimed_at: Option<String>,
    pub claimed_by: String,
    /// For a fired row: whether its run succeeded (`None` while it runs or once pruned).
    pub success: Option<bool>,
    /// For a fired row: whether its run has ended (or was pruned, which only ended runs are).
    pub ended: bool,
}

/// Per job: where its plan resumes after a restart, its last claimed slot and what became of
/// it, and its last slot that fired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// The last claimed slot, or when the job was planned afresh if that is later.
    pub resume_from: Option<Timestamp>,
    pub last_claimed: Option<Timestamp>,
    /// `fired`, `skipped` or `missed`: the fate of `last_claimed`.
    pub last_state: Option<String>,
    pub last_reason: Option<String>,
    pub last_fired: Option<Timestamp>,
}

/// Which rows a page shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotFilter {
    /// `fired`, `skipped`, `missed` or `manual`.
    pub state: Option<String>,
    /// Rows at or after this instant (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Rows after this row in the page order (paging, newest first: the last row's id).
    pub before: Option<i64>,
}

/// Claims each row in one transaction: a row whose `(job, slot)` is already there is refused
/// with who holds it. Errors concern the transaction as a whole (nothing was claimed).
/// Claims `claims` in one transaction; `notices[i]` (notifications decided for claim `i`, a
/// missed gap's) is stored with its row, only if the claim is won.
pub fn claim(
    conn: &Connection,
    claims: &[Claim],
    notices: &[Option<Notified>],
    by: &str,
) -> rusqlite::Result<Vec<ClaimResult>> {
    // IMMEDIATE: the write lock is taken first, so two processes cannot both see a slot free.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let mut insert = conn.prepare_cached(
            "INSERT INTO slots (job, slot_ms, last_ms, at_ms, count, state, reason, detail,
                                trigger, instance, claimed_ms, claimed_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (job, slot_ms) DO NOTHING",
        )?;
        // The job's head follows its latest claimed slot (SET reads the row as it was).
        let mut head = conn.prepare_cached(
            "INSERT INTO heads (job, claimed_ms, fired_ms, last_state, last_reason)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (job) DO UPDATE SET
               last_state = CASE WHEN excluded.claimed_ms >= COALESCE(claimed_ms, excluded.claimed_ms)
                            THEN excluded.last_state ELSE last_state END,
               last_reason = CASE WHEN excluded.claimed_ms >= COALESCE(claimed_ms, excluded.claimed_ms)
                            THEN excluded.last_reason ELSE last_reason END,
               claimed_ms = MAX(COALESCE(claimed_ms, excluded.claimed_ms), excluded.claimed_ms),
               fired_ms = COALESCE(MAX(fired_ms, excluded.fired_ms), fired_ms, excluded.fired_ms)",
        )?;
        let mut holder = conn.prepare_cached(
            "SELECT state, instance, claimed_by, claimed_ms FROM slots WHERE job = ?1 AND slot_ms = ?2",
        )?;
        let mut out = Vec::with_capacity(claims.len());
        for (i, c) in claims.iter().enumerate() {
            let slot = c.slot.map(ms);
            let at = c.last.or(c.slot).map_or(ms(c.at), ms);
            let inserted = insert.execute(params![
                c.job,
                slot,
                c.last.map(ms),
                at,
                c.count.min(i64::MAX as u64) as i64,
                c.fate.state(),
                c.fate.reason(),
                c.detail,
                c.trigger.as_str(),
                c.instance,
                ms(c.at),
                by,
            ])?;
            if inserted == 1 {
                if let Some(Some(notified)) = notices.get(i) {
                    super::outbox::apply(conn, notified)?;
                }
                if let Some(slot) = slot {
                    let end = c.last.map_or(slot, ms);
                    let fired = matches!(c.fate, SlotFate::Fired).then_some(slot);
                    head.execute(params![c.job, end, fired, c.fate.state(), c.fate.reason()])?;
                }
                out.push(Ok(()));
                continue;
            }
            let taken = holder
                .query_row(params![c.job, slot], |r| {
                    Ok(Taken {
                        state: r.get(0)?,
                        instance: r.get(1)?,
                        claimed_by: r.get(2)?,
                        claimed_at: iso(r.get(3)?),
                    })
                })
                .optional()?
                .unwrap_or(Taken {
                    state: "?".into(),
                    instance: None,
                    claimed_by: String::new(),
                    claimed_at: None,
                });
            out.push(Err(taken));
        }
        Ok(out)
    })();
    match result {
        Ok(out) => {
            conn.execute_batch("COMMIT")?;
            Ok(out)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Notes that `jobs` are planned afresh from `at` (added to the plan, not resumed).
pub fn planned(conn: &Connection, jobs: &[String], at: Timestamp) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached(
        "INSERT INTO heads (job, planned_ms) VALUES (?1, ?2)
         ON CONFLICT (job) DO UPDATE SET planned_ms = excluded.planned_ms",
    )?;
    for job in jobs {
        st.execute(params![job, ms(at)])?;
    }
    Ok(())
}

/// Each job's head (see [`Head`]) or, with `job`, that job's only: one row per job, kept with
/// each claim.
pub fn heads(conn: &Connection, job: Option<&str>) -> rusqlite::Result<HashMap<String, Head>> {
    let mut st = conn.prepare_cached(
        "SELECT job, MAX(COALESCE(claimed_ms, planned_ms), COALESCE(planned_ms, claimed_ms)),
                fired_ms, claimed_ms, last_state, last_reason
         FROM heads WHERE ?1 IS NULL OR job = ?1",
    )?;
    let ts = |v: Option<i64>| v.and_then(|m| Timestamp::from_millisecond(m).ok());
    st.query_map(params![job], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Head {
                resume_from: ts(r.get(1)?),
                last_fired: ts(r.get(2)?),
                last_claimed: ts(r.get(3)?),
                last_state: r.get(4)?,
                last_reason: r.get(5)?,
            },
        ))
    })?
    .collect()
}

/// A job's rows, newest first.
pub fn slots(
    conn: &Connection,
    job: &str,
    filter: &SlotFilter,
    limit: usize,
) -> rusqlite::Result<Vec<SlotRow>> {
    let (state, manual) = match filter.state.as_deref() {
        Some("manual") => (None, Some(1)),
        Some(s) => (Some(s.to_string()), Some(0)),
        None => (None, None),
    };
    let mut st = conn.prepare_cached(
        "SELECT s.id, s.job, s.slot_ms, s.last_ms, s.count, s.state, s.reason, s.detail,
                s.trigger, s.instance, s.claimed_ms, s.claimed_by, r.success,
                -- A fired row whose run is gone was pruned, which only happens to ended runs
                -- (a run just claimed is recorded within moments).
                r.ended_ms IS NOT NULL OR (r.instance IS NULL AND s.claimed_ms < ?7)
         FROM slots s LEFT JOIN runs r ON r.instance = s.instance
         WHERE s.job = ?1
           AND (?2 IS NULL OR s.state = ?2)
           AND (?3 IS NULL OR (s.slot_ms IS NULL) = (?3 = 1))
           AND (?4 IS NULL OR s.at_ms >= ?4)
           AND (?5 IS NULL OR (s.at_ms, s.id) < (SELECT at_ms, id FROM slots WHERE id = ?5))
         ORDER BY s.at_ms DESC, s.id DESC LIMIT ?6",
    )?;
    st.query_map(
        params![
            job,
            state,
            manual,
            filter.since_ms,
            filter.before,
            limit as i64,
            ms(crate::clock::now()) - 60_000
        ],
        |r| {
            Ok(SlotRow {
                id: r.get(0)?,
                job: r.get(1)?,
                slot: iso(r.get(2)?),
                last: iso(r.get(3)?),
                count: r.get(4)?,
                state: r.get(5)?,
                reason: r.get(6)?,
                detail: r.get(7)?,
                trigger: r.get(8)?,
                instance: r.get(9)?,
                claimed_at: iso(r.get(10)?),
                claimed_by: r.get(11)?,
                success: r.get(12)?,
                ended: r.get::<_, Option<bool>>(13)?.unwrap_or(false),
            })
        },
    )?
    .collect()
}

/// A fired slot whose run never reached the Salt master: missed after all (`master
/// unreachable`).
pub fn not_launched(conn: &Connection, instance: &str, why: &str) -> rusqlite::Result<()> {
    let detail = format!("its launch never reached the Salt master: {why}");
    refate(
        conn,
        instance,
        SlotFate::Missed(MissReason::MasterUnreachable),
        &detail,
    )
}

/// A fired slot whose run ended with every target under maintenance: skipped after all
/// (`machine maintenance`). Nothing changes when any target did run.
pub fn ended(conn: &Connection, instance: &str) -> rusqlite::Result<()> {
    let all_in_maintenance: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM targets WHERE instance = ?1)
                AND NOT EXISTS (SELECT 1 FROM targets WHERE instance = ?1 AND state != 'maintenance')",
        )?
        .query_row(params![instance], |r| r.get(0))?;
    if all_in_maintenance {
        refate(
            conn,
            instance,
            SlotFate::Skipped(SkipReason::MachineMaintenance),
            "every target was under maintenance",
        )?;
    }
    Ok(())
}

/// Changes what became of the slot `instance` fired (and of the job's head if that is the
/// slot), and its last fired slot.
fn refate(conn: &Connection, instance: &str, fate: SlotFate, detail: &str) -> rusqlite::Result<()> {
    let (state, reason) = (fate.state(), fate.reason());
    conn.prepare_cached(
        "UPDATE heads SET last_state = ?2, last_reason = ?3
         WHERE (job, claimed_ms) = (SELECT job, slot_ms FROM slots WHERE instance = ?1 AND state = 'fired')",
    )?
    .execute(params![instance, state, reason])?;
    conn.prepare_cached(
        "UPDATE slots SET state = ?2, reason = ?3, detail = ?4
         WHERE instance = ?1 AND state = 'fired'",
    )?
    .execute(params![instance, state, reason, detail])?;
    conn.prepare_cached(
        "UPDATE heads SET fired_ms = (SELECT MAX(slot_ms) FROM slots s
                                      WHERE s.job = heads.job AND s.state = 'fired')
         WHERE job = (SELECT job FROM slots WHERE instance = ?1)",
    )?
    .execute(params![instance])?;
    Ok(())
}

/// Drops rows older than `cutoff_ms` and, per job, all but the newest `per_job` (0: no limit),
/// always keeping each job's last claimed slot (where a restart resumes).
pub fn prune(conn: &Connection, cutoff_ms: Option<i64>, per_job: usize) -> rusqlite::Result<()> {
    let newest = "SELECT MAX(COALESCE(last_ms, slot_ms)) FROM slots k WHERE k.job = slots.job";
    if let Some(cutoff) = cutoff_ms {
        conn.execute(
            &format!(
                "DELETE FROM slots WHERE at_ms < ?1 AND COALESCE(last_ms, slot_ms, -1) IS NOT ({newest})"
            ),
            params![cutoff],
        )?;
    }
    if per_job > 0 {
        conn.execute(
            &format!(
                "DELETE FROM slots WHERE id NOT IN (
                    SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY job ORDER BY at_ms DESC, id DESC) AS n FROM slots)
                    WHERE n <= ?1)
                 AND COALESCE(last_ms, slot_ms, -1) IS NOT ({newest})"
            ),
            params![per_job as i64],
        )?;
    }
    Ok(())
}
