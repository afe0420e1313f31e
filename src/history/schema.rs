//! The database schema as numbered migrations; `user_version` says which ran. A migration is
//! never edited once released: a change is a new one.

use rusqlite::Connection;

/// Each entry brings the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: runs, their targets (with capped output), skipped slots, persisted maintenance.
    "CREATE TABLE runs (
        instance TEXT PRIMARY KEY,
        job TEXT NOT NULL,
        trigger TEXT NOT NULL,
        scheduled_ms INTEGER,
        started_ms INTEGER NOT NULL,
        ended_ms INTEGER,
        jid TEXT,
        success INTEGER,
        succeeded INTEGER,
        total INTEGER,
        token TEXT NOT NULL
     );
     CREATE INDEX runs_by_job ON runs(job, started_ms);
     CREATE TABLE targets (
        instance TEXT NOT NULL REFERENCES runs(instance) ON DELETE CASCADE,
        machine TEXT NOT NULL,
        state TEXT NOT NULL,
        confirmed_ms INTEGER,
        ended_ms INTEGER,
        code INTEGER,
        note TEXT,
        wrapper_version TEXT,
        pid INTEGER,
        heartbeat_ms INTEGER,
        head TEXT NOT NULL DEFAULT '',
        tail TEXT NOT NULL DEFAULT '',
        dropped INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (instance, machine)
     );
     CREATE TABLE skips (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL
     );
     CREATE INDEX skips_by_job ON skips(job, at_ms);
     CREATE TABLE maintenance (
        machine TEXT PRIMARY KEY
     );",
    // 2: the next output message expected from each target's wrapper, so a restarted daemon
    // resumes the stream where the database has it.
    "ALTER TABLE targets ADD COLUMN next_seq INTEGER NOT NULL DEFAULT 0;",
    // 3: output as chunks at their byte position (an append costs its own size, not the whole
    // output's); the head/tail columns move into it.
    "CREATE TABLE chunks (
        instance TEXT NOT NULL REFERENCES runs(instance) ON DELETE CASCADE,
        machine TEXT NOT NULL,
        pos INTEGER NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (instance, machine, pos)
     ) WITHOUT ROWID;
     ALTER TABLE targets ADD COLUMN output_bytes INTEGER NOT NULL DEFAULT 0;
     INSERT INTO chunks SELECT instance, machine, 0, head FROM targets WHERE head != '';
     INSERT INTO chunks SELECT instance, machine, length(CAST(head AS BLOB)) + dropped, tail
        FROM targets WHERE tail != '';
     UPDATE targets SET output_bytes = length(CAST(head AS BLOB)) + dropped + length(CAST(tail AS BLOB));
     ALTER TABLE targets DROP COLUMN head;
     ALTER TABLE targets DROP COLUMN tail;",
    // 4: the batches of a `batch_size` run not yet published (JSON lists of machines), so a
    // restarted daemon goes on with them; the jid of the launch last sent to Salt, so a
    // restart before its reply publishes it again under the same jid (minions run a jid once).
    "ALTER TABLE runs ADD COLUMN batches TEXT;
     ALTER TABLE runs ADD COLUMN launch_jid TEXT;",
    // 5: the fire ledger: one row per (job, slot), claimed before anything is published (the
    // unique key refuses a second claim); manual runs (no slot) and missed gaps (to `last_ms`)
    // too. `at_ms` orders a job's rows. Runs and skipped slots so far become its first rows.
    // `heads`, one row per job kept with each claim: its last claimed slot and that slot's
    // fate, its last fired slot, and when it was last planned afresh (added to the plan), so a
    // restart knows where each job's plan resumes, and the jobs list reads one row per job.
    "CREATE TABLE slots (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        slot_ms INTEGER,
        last_ms INTEGER,
        at_ms INTEGER NOT NULL,
        count INTEGER NOT NULL DEFAULT 1,
        state TEXT NOT NULL,
        reason TEXT,
        detail TEXT NOT NULL DEFAULT '',
        trigger TEXT NOT NULL,
        instance TEXT,
        claimed_ms INTEGER NOT NULL,
        claimed_by TEXT NOT NULL DEFAULT ''
     );
     CREATE UNIQUE INDEX slots_claim ON slots(job, slot_ms);
     CREATE INDEX slots_by_job ON slots(job, at_ms);
     CREATE INDEX slots_by_instance ON slots(instance) WHERE instance IS NOT NULL;
     INSERT OR IGNORE INTO slots (job, slot_ms, at_ms, state, trigger, instance, claimed_ms)
        SELECT job, scheduled_ms, COALESCE(scheduled_ms, started_ms), 'fired', trigger, instance, started_ms
        FROM runs ORDER BY started_ms;
     INSERT OR IGNORE INTO slots (job, slot_ms, at_ms, state, reason, detail, trigger, claimed_ms)
        SELECT job, at_ms / 1000 * 1000, at_ms / 1000 * 1000, 'skipped', reason, detail, 'schedule', at_ms
        FROM skips ORDER BY at_ms;
     DROP TABLE skips;
     CREATE TABLE heads (
        job TEXT PRIMARY KEY,
        claimed_ms INTEGER,
        fired_ms INTEGER,
        last_state TEXT,
        last_reason TEXT,
        planned_ms INTEGER
     );
     INSERT INTO heads (job, claimed_ms, fired_ms)
        SELECT job, MAX(COALESCE(last_ms, slot_ms)), MAX(CASE WHEN state = 'fired' THEN slot_ms END)
        FROM slots WHERE slot_ms IS NOT NULL GROUP BY job;
     UPDATE heads SET (last_state, last_reason) =
        (SELECT state, reason FROM slots s WHERE s.job = heads.job
           AND COALESCE(s.last_ms, s.slot_ms) = heads.claimed_ms);",
    // 6: notifications. Each job's failure streak, and the outbox: one row per notice and
    // channel, written with the run's end, sent (and retried) from here, so a restart neither
    // loses nor repeats one.
    "CREATE TABLE notify_streaks (
        job TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        told INTEGER NOT NULL
     );
     CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        channel TEXT NOT NULL,
        event TEXT NOT NULL,
        instance TEXT,
        slot_ms INTEGER,
        body TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_ms INTEGER,
        last_error TEXT,
        done_ms INTEGER
     );
     CREATE INDEX deliveries_due ON deliveries(next_ms) WHERE state = 'pending';
     CREATE INDEX deliveries_by_job ON deliveries(job, id);",
    // 7: retries. Each run's attempt of its slot (the first run names them all), and an
    // attempt planned for a run's failed targets, until the attempt starts.
    "ALTER TABLE runs ADD COLUMN first_instance TEXT;
     ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE runs ADD COLUMN retry_attempt INTEGER;
     ALTER TABLE runs ADD COLUMN retry_ms INTEGER;
     ALTER TABLE runs ADD COLUMN retry_machines TEXT;
     CREATE INDEX runs_retry_due ON runs(retry_ms) WHERE retry_ms IS NOT NULL;",
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the database is from a newer saltpeter (schema {found}, this one knows {known})")]
    TooNew { found: i64, known: usize },
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// Brings `conn` to the latest schema, each step in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found as usize > MIGRATIONS.len() {
        return Err(MigrateError::TooNew {
            found,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
