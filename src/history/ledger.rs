//! The fire ledger's SQL: one row per `(job, slot)` under a unique key, claimed before
//! anything is published, so a second claim of a slot is refused by the database, not by
//! anyone's memory. Manual runs are rows too (no slot); a gap of missed slots is one row.

use std::collections::HashMap;

use jiff::Timestamp;
use serde::Serialize;

use super::db::{Db, DbError, p};
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
    db: &Db,
    claims: &[Claim],
    notices: &[Option<Notified>],
    by: &str,
) -> Result<Vec<ClaimResult>, DbError> {
    // IMMEDIATE: the write lock is taken first, so two processes cannot both see a slot free.
    // (On PostgreSQL a concurrent insert of the same `(job, slot_ms)` waits for the first
    // transaction to end, then does nothing.)
    db.begin_write()?;
    let result = (|| {
        // In one order for every daemon (job, then slot): two daemons claiming overlapping
        // sets wait for each other's rows in the same order, never in a cycle (a deadlock).
        let mut order: Vec<usize> = (0..claims.len()).collect();
        order.sort_by_key(|&i| (&claims[i].job, claims[i].slot));
        let mut out: Vec<Option<ClaimResult>> = vec![None; claims.len()];
        for i in order {
            let c = &claims[i];
            let slot = c.slot.map(ms);
            let at = c.last.or(c.slot).map_or(ms(c.at), ms);
            let inserted = db.exec(
                "INSERT INTO slots (job, slot_ms, last_ms, at_ms, count, state, reason, detail,
                                    trigger, instance, claimed_ms, claimed_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (job, slot_ms) DO NOTHING",
                p![
                    &c.job,
                    slot,
                    c.last.map(ms),
                    at,
                    c.count.min(i64::MAX as u64) as i64,
                    c.fate.state(),
                    c.fate.reason(),
                    &c.detail,
                    c.trigger.as_str(),
                    c.instance.as_deref(),
                    ms(c.at),
                    by,
                ],
            )?;
            if inserted == 1 {
                if let Some(Some(notified)) = notices.get(i) {
                    super::outbox::apply(db, notified)?;
                }
                if let Some(slot) = slot {
                    let end = c.last.map_or(slot, ms);
                    let fired = matches!(c.fate, SlotFate::Fired).then_some(slot);
                    // The job's head follows its latest claimed slot (SET reads the row as it
                    // was).
                    db.exec(
                        "INSERT INTO heads (job, claimed_ms, fired_ms, last_state, last_reason)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (job) DO UPDATE SET
                           last_state = CASE WHEN excluded.claimed_ms >= COALESCE(heads.claimed_ms, excluded.claimed_ms)
                                        THEN excluded.last_state ELSE heads.last_state END,
                           last_reason = CASE WHEN excluded.claimed_ms >= COALESCE(heads.claimed_ms, excluded.claimed_ms)
                                        THEN excluded.last_reason ELSE heads.last_reason END,
                           claimed_ms = greatest(COALESCE(heads.claimed_ms, excluded.claimed_ms), excluded.claimed_ms),
                           fired_ms = COALESCE(greatest(heads.fired_ms, excluded.fired_ms), heads.fired_ms, excluded.fired_ms)",
                        p![&c.job, end, fired, c.fate.state(), c.fate.reason()],
                    )?;
                }
                out[i] = Some(Ok(()));
                continue;
            }
            let taken = db
                .row(
                    "SELECT state, instance, claimed_by, claimed_ms FROM slots WHERE job = ?1 AND slot_ms = ?2",
                    p![&c.job, slot],
                    |r| {
                        Ok(Taken {
                            state: r.get(0)?,
                            instance: r.get(1)?,
                            claimed_by: r.get(2)?,
                            claimed_at: iso(r.get(3)?),
                        })
                    },
                )?
                .unwrap_or(Taken {
                    state: "?".into(),
                    instance: None,
                    claimed_by: String::new(),
                    claimed_at: None,
                });
            out[i] = Some(Err(taken));
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every claim answered"))
            .collect::<Vec<_>>())
    })();
    match result {
        Ok(out) => {
            db.commit()?;
            Ok(out)
        }
        Err(e) => {
            let _ = db.rollback();
            Err(e)
        }
    }
}

/// Notes that `jobs` are planned afresh from `at` (added to the plan, not resumed).
pub fn planned(db: &Db, jobs: &[String], at: Timestamp) -> Result<(), DbError> {
    for job in jobs {
        db.exec(
            "INSERT INTO heads (job, planned_ms) VALUES (?1, ?2)
             ON CONFLICT (job) DO UPDATE SET planned_ms = excluded.planned_ms",
            p![job, ms(at)],
        )?;
    }
    Ok(())
}

/// Each job's head (see [`Head`]) or, with `job`, that job's only: one row per job, kept with
/// each claim.
pub fn heads(db: &Db, job: Option<&str>) -> Result<HashMap<String, Head>, DbError> {
    let ts = |v: Option<i64>| v.and_then(|m| Timestamp::from_millisecond(m).ok());
    let rows = db.query(
        "SELECT job, greatest(COALESCE(claimed_ms, planned_ms), COALESCE(planned_ms, claimed_ms)),
                fired_ms, claimed_ms, last_state, last_reason
         FROM heads WHERE CAST(?1 AS TEXT) IS NULL OR job = ?1",
        p![job],
        |r| {
            Ok((
                r.get::<String>(0)?,
                Head {
                    resume_from: ts(r.get(1)?),
                    last_fired: ts(r.get(2)?),
                    last_claimed: ts(r.get(3)?),
                    last_state: r.get(4)?,
                    last_reason: r.get(5)?,
                },
            ))
        },
    )?;
    Ok(rows.into_iter().collect())
}

/// A job's rows, newest first.
pub fn slots(
    db: &Db,
    job: &str,
    filter: &SlotFilter,
    limit: usize,
) -> Result<Vec<SlotRow>, DbError> {
    let (state, manual) = match filter.state.as_deref() {
        Some("manual") => (None, Some(1_i64)),
        Some(s) => (Some(s), Some(0_i64)),
        None => (None, None),
    };
    db.query(
        "SELECT s.id, s.job, s.slot_ms, s.last_ms, s.count, s.state, s.reason, s.detail,
                s.trigger, s.instance, s.claimed_ms, s.claimed_by, r.success,
                -- A fired row whose run is gone was pruned, which only happens to ended runs
                -- (a run just claimed is recorded within moments).
                r.ended_ms IS NOT NULL OR (r.instance IS NULL AND s.claimed_ms < ?7)
         FROM slots s LEFT JOIN runs r ON r.instance = s.instance
         WHERE s.job = ?1
           AND (CAST(?2 AS TEXT) IS NULL OR s.state = ?2)
           AND (CAST(?3 AS BIGINT) IS NULL OR (s.slot_ms IS NULL) = (?3 = 1))
           AND (CAST(?4 AS BIGINT) IS NULL OR s.at_ms >= ?4)
           AND (CAST(?5 AS BIGINT) IS NULL OR (s.at_ms, s.id) < (SELECT at_ms, id FROM slots WHERE id = ?5))
         ORDER BY s.at_ms DESC, s.id DESC LIMIT ?6",
        p![
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
                ended: r.get::<Option<bool>>(13)?.unwrap_or(false),
            })
        },
    )
}

/// A fired slot whose run never reached the Salt master: missed after all (`master
/// unreachable`).
pub fn not_launched(db: &Db, instance: &str, why: &str) -> Result<(), DbError> {
    let detail = format!("its launch never reached the Salt master: {why}");
    refate(
        db,
        instance,
        SlotFate::Missed(MissReason::MasterUnreachable),
        &detail,
    )
}

/// A fired slot whose run ended with every target under maintenance: skipped after all
/// (`machine maintenance`). Nothing changes when any target did run.
pub fn ended(db: &Db, instance: &str) -> Result<(), DbError> {
    let all_in_maintenance: bool = db
        .row(
            "SELECT EXISTS (SELECT 1 FROM targets WHERE instance = ?1)
                AND NOT EXISTS (SELECT 1 FROM targets WHERE instance = ?1 AND state != 'maintenance')",
            p![instance],
            |r| r.get(0),
        )?
        .unwrap_or(false);
    if all_in_maintenance {
        refate(
            db,
            instance,
            SlotFate::Skipped(SkipReason::MachineMaintenance),
            "every target was under maintenance",
        )?;
    }
    Ok(())
}

/// Changes what became of the slot `instance` fired (and of the job's head if that is the
/// slot), and its last fired slot.
fn refate(db: &Db, instance: &str, fate: SlotFate, detail: &str) -> Result<(), DbError> {
    let (state, reason) = (fate.state(), fate.reason());
    db.exec(
        "UPDATE heads SET last_state = ?2, last_reason = ?3
         WHERE (job, claimed_ms) = (SELECT job, slot_ms FROM slots WHERE instance = ?1 AND state = 'fired')",
        p![instance, state, reason],
    )?;
    db.exec(
        "UPDATE slots SET state = ?2, reason = ?3, detail = ?4
         WHERE instance = ?1 AND state = 'fired'",
        p![instance, state, reason, detail],
    )?;
    db.exec(
        "UPDATE heads SET fired_ms = (SELECT MAX(slot_ms) FROM slots s
                                      WHERE s.job = heads.job AND s.state = 'fired')
         WHERE job = (SELECT job FROM slots WHERE instance = ?1)",
        p![instance],
    )?;
    Ok(())
}

/// Drops rows older than `cutoff_ms` and, per job, all but the newest `per_job` (0: no limit),
/// always keeping each job's last claimed slot (where a restart resumes).
pub fn prune(db: &Db, cutoff_ms: Option<i64>, per_job: usize) -> Result<(), DbError> {
    let newest = "SELECT MAX(COALESCE(last_ms, slot_ms)) FROM slots k WHERE k.job = slots.job";
    if let Some(cutoff) = cutoff_ms {
        db.exec(
            &format!(
                "DELETE FROM slots WHERE at_ms < ?1
                 AND COALESCE(last_ms, slot_ms, -1) IS DISTINCT FROM ({newest})"
            ),
            p![cutoff],
        )?;
    }
    if per_job > 0 {
        db.exec(
            &format!(
                "DELETE FROM slots WHERE id NOT IN (
                    SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY job ORDER BY at_ms DESC, id DESC) AS n FROM slots) AS ranked
                    WHERE n <= ?1)
                 AND COALESCE(last_ms, slot_ms, -1) IS DISTINCT FROM ({newest})"
            ),
            p![per_job.min(i64::MAX as usize) as i64],
        )?;
    }
    Ok(())
}
