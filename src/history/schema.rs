//! The database schema as numbered migrations, one list for both engines: SQLite's
//! `user_version` or PostgreSQL's `saltpeter_schema` row says which ran. A migration is never
//! edited once released: a change is a new one. PostgreSQL support came with schema 8: a new
//! PostgreSQL database starts from [`POSTGRES_BASELINE`] (schema 7 as SQLite has it, which a
//! test compares column by column) and takes every later migration in its portable text.

use super::db::{Db, DbError, Kind, p};

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
    // 8: several daemons on one store. Each daemon's row (its heartbeat, which is the lease on
    // the runs it owns; where its API and wrappers reach it), each run's owner and the
    // generation of its lease (fencing: a daemon acts on a run only under the generation it
    // took it with), and commands for the daemon that owns what they concern.
    "CREATE TABLE daemons (
        name TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        version TEXT NOT NULL,
        master TEXT NOT NULL DEFAULT '',
        api_url TEXT NOT NULL DEFAULT '',
        machines_url TEXT NOT NULL DEFAULT '',
        started_ms INTEGER NOT NULL,
        heartbeat_ms INTEGER NOT NULL
     );
     ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
     ALTER TABLE runs ADD COLUMN lease_gen INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX runs_in_flight ON runs(owner) WHERE ended_ms IS NULL;
     CREATE TABLE commands (
        id INTEGER PRIMARY KEY,
        daemon TEXT NOT NULL,
        kind TEXT NOT NULL,
        instance TEXT,
        machine TEXT,
        job TEXT,
        created_ms INTEGER NOT NULL,
        done_ms INTEGER,
        outcome TEXT
     );
     CREATE INDEX commands_pending ON commands(daemon, id) WHERE done_ms IS NULL;",
    // 9: each target's wrapper connections (a count past one is a reconnect: a network cut,
    // a daemon restart, or an adoption, which `connected_to` names), and API tokens kept in
    // the store, so every daemon on it accepts the same ones (digests only).
    "ALTER TABLE targets ADD COLUMN connections INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE targets ADD COLUMN connected_ms INTEGER;
     ALTER TABLE targets ADD COLUMN connected_to TEXT NOT NULL DEFAULT '';
     CREATE TABLE api_tokens (
        name TEXT PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        operator INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
     );",
    // 10: output chunks in a rowid table. In a WITHOUT ROWID table a row is a key: a chunk
    // of 1 KiB (past about a quarter of a page) spills to an overflow page, and every insert's
    // seek read its neighbours' overflow pages back (most of the store's time with a thousand
    // targets streaming, growing with the table). Here rows append in id order and only the
    // small index entry is placed by target.
    "CREATE TABLE chunks_by_id (
        id INTEGER PRIMARY KEY,
        instance TEXT NOT NULL REFERENCES runs(instance) ON DELETE CASCADE,
        machine TEXT NOT NULL,
        pos INTEGER NOT NULL,
        data TEXT NOT NULL
     );
     INSERT INTO chunks_by_id (instance, machine, pos, data)
        SELECT instance, machine, pos, data FROM chunks ORDER BY instance, machine, pos;
     DROP TABLE chunks;
     ALTER TABLE chunks_by_id RENAME TO chunks;
     CREATE UNIQUE INDEX chunks_at ON chunks(instance, machine, pos);",
];

/// Migrations up to this one are SQLite's own text; PostgreSQL starts here from the baseline.
const BASELINE_VERSION: usize = 7;

/// Schema 7 for PostgreSQL: SQLite's tables with PostgreSQL's types.
pub const POSTGRES_BASELINE: &str = "
    CREATE TABLE runs (
        instance TEXT PRIMARY KEY,
        job TEXT NOT NULL,
        trigger TEXT NOT NULL,
        scheduled_ms BIGINT,
        started_ms BIGINT NOT NULL,
        ended_ms BIGINT,
        jid TEXT,
        success BIGINT,
        succeeded BIGINT,
        total BIGINT,
        token TEXT NOT NULL,
        batches TEXT,
        launch_jid TEXT,
        first_instance TEXT,
        attempt BIGINT NOT NULL DEFAULT 1,
        retry_attempt BIGINT,
        retry_ms BIGINT,
        retry_machines TEXT
    );
    CREATE INDEX runs_by_job ON runs(job, started_ms);
    CREATE INDEX runs_retry_due ON runs(retry_ms) WHERE retry_ms IS NOT NULL;
    CREATE TABLE targets (
        instance TEXT NOT NULL REFERENCES runs(instance) ON DELETE CASCADE,
        machine TEXT NOT NULL,
        state TEXT NOT NULL,
        confirmed_ms BIGINT,
        ended_ms BIGINT,
        code BIGINT,
        note TEXT,
        wrapper_version TEXT,
        pid BIGINT,
        heartbeat_ms BIGINT,
        dropped BIGINT NOT NULL DEFAULT 0,
        next_seq BIGINT NOT NULL DEFAULT 0,
        output_bytes BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (instance, machine)
    );
    CREATE TABLE chunks (
        instance TEXT NOT NULL REFERENCES runs(instance) ON DELETE CASCADE,
        machine TEXT NOT NULL,
        pos BIGINT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (instance, machine, pos)
    );
    CREATE TABLE maintenance (
        machine TEXT PRIMARY KEY
    );
    CREATE TABLE slots (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        job TEXT NOT NULL,
        slot_ms BIGINT,
        last_ms BIGINT,
        at_ms BIGINT NOT NULL,
        count BIGINT NOT NULL DEFAULT 1,
        state TEXT NOT NULL,
        reason TEXT,
        detail TEXT NOT NULL DEFAULT '',
        trigger TEXT NOT NULL,
        instance TEXT,
        claimed_ms BIGINT NOT NULL,
        claimed_by TEXT NOT NULL DEFAULT ''
    );
    CREATE UNIQUE INDEX slots_claim ON slots(job, slot_ms);
    CREATE INDEX slots_by_job ON slots(job, at_ms);
    CREATE INDEX slots_by_instance ON slots(instance) WHERE instance IS NOT NULL;
    CREATE TABLE heads (
        job TEXT PRIMARY KEY,
        claimed_ms BIGINT,
        fired_ms BIGINT,
        last_state TEXT,
        last_reason TEXT,
        planned_ms BIGINT
    );
    CREATE TABLE notify_streaks (
        job TEXT PRIMARY KEY,
        failures BIGINT NOT NULL,
        told BIGINT NOT NULL
    );
    CREATE TABLE deliveries (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        job TEXT NOT NULL,
        channel TEXT NOT NULL,
        event TEXT NOT NULL,
        instance TEXT,
        slot_ms BIGINT,
        body TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        state TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_ms BIGINT,
        last_error TEXT,
        done_ms BIGINT
    );
    CREATE INDEX deliveries_due ON deliveries(next_ms) WHERE state = 'pending';
    CREATE INDEX deliveries_by_job ON deliveries(job, id);";

/// A portable migration's text for PostgreSQL: SQLite's type names become PostgreSQL's.
fn for_postgres(sql: &str) -> String {
    sql.replace(
        "INTEGER PRIMARY KEY",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    )
    .replace("INTEGER", "BIGINT")
    .replace("BLOB", "BYTEA")
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the database is from a newer saltpeter (schema {found}, this one knows {known})")]
    TooNew { found: i64, known: usize },
    #[error(transparent)]
    Sql(#[from] DbError),
}

/// Any number; the same in every daemon, so two starting at once migrate one after the other.
const MIGRATION_LOCK: i64 = 0x5a17_9e7e_0000_0001;

/// The schema version the database is at.
pub fn version(db: &Db) -> Result<i64, DbError> {
    match db.kind() {
        Kind::Sqlite => Ok(db
            .row("PRAGMA user_version", p![], |r| r.get(0))?
            .unwrap_or(0)),
        Kind::Postgres => {
            db.batch("CREATE TABLE IF NOT EXISTS saltpeter_schema (version BIGINT NOT NULL)")?;
            Ok(db
                .row("SELECT version FROM saltpeter_schema", p![], |r| r.get(0))?
                .unwrap_or(0))
        }
    }
}

fn set_version(db: &Db, v: usize) -> Result<(), DbError> {
    match db.kind() {
        Kind::Sqlite => db.batch(&format!("PRAGMA user_version = {v}")),
        Kind::Postgres => {
            db.exec("DELETE FROM saltpeter_schema", p![])?;
            db.exec(
                "INSERT INTO saltpeter_schema (version) VALUES (?1)",
                p![v as i64],
            )?;
            Ok(())
        }
    }
}

/// Brings `db` to the latest schema, each step in its own transaction.
pub fn migrate(db: &Db) -> Result<(), MigrateError> {
    if db.kind() == Kind::Postgres {
        // Created outside the lock (IF NOT EXISTS is safe to race), then read under it.
        version(db)?;
    }
    loop {
        db.begin()?;
        let step = (|| -> Result<bool, MigrateError> {
            if db.kind() == Kind::Postgres {
                // A transaction's lock (never a session's: PgBouncer may hand the session to
                // someone else), held until this step commits.
                db.row(
                    "SELECT pg_advisory_xact_lock(?1)",
                    p![MIGRATION_LOCK],
                    |_| Ok(()),
                )?;
            }
            let found = version(db)?;
            if found as usize > MIGRATIONS.len() {
                return Err(MigrateError::TooNew {
                    found,
                    known: MIGRATIONS.len(),
                });
            }
            let found = found as usize;
            if found == MIGRATIONS.len() {
                return Ok(false);
            }
            match db.kind() {
                Kind::Sqlite => {
                    db.batch(MIGRATIONS[found])?;
                    set_version(db, found + 1)?;
                }
                Kind::Postgres if found < BASELINE_VERSION => {
                    db.batch(POSTGRES_BASELINE)?;
                    set_version(db, BASELINE_VERSION)?;
                }
                Kind::Postgres => {
                    db.batch(&for_postgres(MIGRATIONS[found]))?;
                    set_version(db, found + 1)?;
                }
            }
            Ok(true)
        })();
        match step {
            Ok(more) => {
                db.commit()?;
                if !more {
                    return Ok(());
                }
            }
            Err(e) => {
                let _ = db.rollback();
                return Err(e);
            }
        }
    }
}
