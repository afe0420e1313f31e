//! Several daemons on one store, in SQL: each daemon's row, whose heartbeat is its lease on
//! the runs it owns; adoption of runs whose owner's lease ran out (one daemon wins each, by
//! the row's lock); fencing by lease generation; and commands addressed to the daemon that
//! owns what they concern. Leases are judged by the database's clock only.

use serde::Serialize;

use super::db::{Db, DbError, Kind, P, p};
use super::iso;

/// How often a daemon renews its lease (its heartbeat row).
pub const BEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A daemon whose heartbeat is older than this has lost its lease: its runs are adopted.
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// What a daemon says of itself when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DaemonInfo {
    pub name: String,
    /// The master it serves (`master_name`): jobs pinned to it (`master: NAME`) are its.
    pub master: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    /// Where its API is reached (`http://host:port`), for operators and other daemons' UIs.
    pub api_url: String,
    /// Where wrappers reach it (`ws://host:port`), given to every launch as a fallback.
    pub machines_url: String,
}

/// A daemon as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DaemonRow {
    #[serde(flatten)]
    pub info: DaemonInfo,
    pub started_at: Option<String>,
    pub last_heartbeat: Option<String>,
    /// Its lease is current (a heartbeat within the lease time, by the database's clock).
    pub alive: bool,
    /// The runs in flight it owns.
    pub runs: Vec<String>,
}

/// A run taken over, with the lease generation this daemon holds it under.
pub type Held = (String, i64);

/// What one heartbeat found.
#[derive(Debug, Default)]
pub struct BeatRows {
    /// Runs whose owner's lease ran out, now this daemon's.
    pub adopted: Vec<Held>,
    /// Every run in flight this daemon owns now (adopted ones included).
    pub owned: Vec<Held>,
    /// The machines URLs of the other live daemons.
    pub peers: Vec<String>,
}

/// Writes this daemon's row (a restart under the same name replaces it) and takes back the
/// runs it owned before, runs of no one (from before owners were recorded), and runs of
/// daemons whose lease ran out. Returns the runs it holds, and how many other daemons hold
/// a current lease.
pub fn register(db: &Db, me: &DaemonInfo, lease_ms: i64) -> Result<(Vec<Held>, usize), DbError> {
    let now = db.now_ms_sql();
    db.exec(
        &format!(
            "INSERT INTO daemons (name, host, pid, version, api_url, machines_url, master, started_ms, heartbeat_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, {now}, {now})
             ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid,
               master = excluded.master,
               version = excluded.version, api_url = excluded.api_url,
               machines_url = excluded.machines_url, started_ms = excluded.started_ms,
               heartbeat_ms = excluded.heartbeat_ms"
        ),
        p![
            &me.name,
            &me.host,
            i64::from(me.pid),
            &me.version,
            &me.api_url,
            &me.machines_url,
            &me.master
        ],
    )?;
    db.exec(
        "UPDATE runs SET owner = ?1, lease_gen = lease_gen + 1
         WHERE ended_ms IS NULL AND (owner = ?1 OR owner = '')",
        p![&me.name],
    )?;
    adopt(db, &me.name, lease_ms)?;
    let others: i64 = db
        .row(
            &format!(
                "SELECT COUNT(*) FROM daemons WHERE name != ?1 AND heartbeat_ms >= {now} - ?2"
            ),
            p![&me.name, lease_ms],
            |r| r.get(0),
        )?
        .unwrap_or(0);
    Ok((owned(db, &me.name)?, others.max(0) as usize))
}

/// Renews this daemon's lease and takes over the runs of daemons whose lease ran out.
pub fn beat(db: &Db, me: &str, lease_ms: i64) -> Result<BeatRows, DbError> {
    let now = db.now_ms_sql();
    db.exec(
        &format!("UPDATE daemons SET heartbeat_ms = {now} WHERE name = ?1"),
        p![me],
    )?;
    let adopted = adopt(db, me, lease_ms)?;
    let owned = owned(db, me)?;
    let peers = db.query(
        &format!(
            "SELECT machines_url FROM daemons
             WHERE name != ?1 AND machines_url != '' AND heartbeat_ms >= {now} - ?2
             ORDER BY name"
        ),
        p![me, lease_ms],
        |r| r.get(0),
    )?;
    Ok(BeatRows {
        adopted,
        owned,
        peers,
    })
}

/// Runs in flight whose owner holds no current lease become `me`'s, under a new generation.
fn adopt(db: &Db, me: &str, lease_ms: i64) -> Result<Vec<Held>, DbError> {
    let now = db.now_ms_sql();
    db.query(
        &format!(
            "UPDATE runs SET owner = ?1, lease_gen = lease_gen + 1
             WHERE ended_ms IS NULL AND owner != ?1
               AND NOT EXISTS (SELECT 1 FROM daemons d
                               WHERE d.name = runs.owner AND d.heartbeat_ms >= {now} - ?2)
             RETURNING instance, lease_gen"
        ),
        p![me, lease_ms],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

fn owned(db: &Db, me: &str) -> Result<Vec<Held>, DbError> {
    db.query(
        "SELECT instance, lease_gen FROM runs WHERE ended_ms IS NULL AND owner = ?1",
        p![me],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Of `held`, the runs `me` no longer holds (another daemon took them over). On PostgreSQL
/// the rows stay locked until the transaction ends, so no one takes them over between this
/// check and the commit it guards.
pub fn lost(db: &Db, me: &str, held: &[(&str, i64)]) -> Result<Vec<String>, DbError> {
    // A chunk per statement, padded to its full width so one prepared statement serves
    // every commit (a round trip per 64 runs, not per run).
    const CHUNK: usize = 64;
    let lock = match db.kind() {
        Kind::Postgres => " FOR UPDATE",
        Kind::Sqlite => "",
    };
    let slots: Vec<String> = (1..=CHUNK).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "SELECT instance, owner, lease_gen FROM runs WHERE instance IN ({}){lock}",
        slots.join(", ")
    );
    let mut out = Vec::new();
    for chunk in held.chunks(CHUNK) {
        let params: Vec<P<'_>> = (0..CHUNK)
            .map(|i| P::Text(chunk.get(i).unwrap_or(&chunk[0]).0))
            .collect();
        let rows: Vec<(String, String, i64)> =
            db.query(&sql, &params, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        // A run pruned meanwhile has no row and is not "lost": nothing else holds it.
        for (instance, owner, g) in rows {
            let ours = chunk
                .iter()
                .any(|(i, gen_held)| *i == instance && *gen_held == g);
            if owner != me || !ours {
                out.push(instance);
            }
        }
    }
    Ok(out)
}

/// Every daemon the store knows, with the runs in flight each owns.
pub fn daemons(db: &Db, lease_ms: i64) -> Result<Vec<DaemonRow>, DbError> {
    let now = db.now_ms_sql();
    let mut rows = db.query(
        &format!(
            "SELECT name, host, pid, version, api_url, machines_url, started_ms, heartbeat_ms,
                    heartbeat_ms >= {now} - ?1, master
             FROM daemons ORDER BY name"
        ),
        p![lease_ms],
        |r| {
            Ok(DaemonRow {
                info: DaemonInfo {
                    name: r.get(0)?,
                    host: r.get(1)?,
                    pid: r.get(2)?,
                    version: r.get(3)?,
                    api_url: r.get(4)?,
                    machines_url: r.get(5)?,
                    master: r.get(9)?,
                },
                started_at: iso(r.get(6)?),
                last_heartbeat: iso(r.get(7)?),
                alive: r.get(8)?,
                runs: Vec::new(),
            })
        },
    )?;
    let runs: Vec<(String, String)> = db.query(
        "SELECT owner, instance FROM runs WHERE ended_ms IS NULL ORDER BY started_ms",
        p![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    for (owner, instance) in runs {
        if let Some(d) = rows.iter_mut().find(|d| d.info.name == owner) {
            d.runs.push(instance);
        }
    }
    Ok(rows)
}

/// The daemon that owns the run in flight `instance`, if any.
pub fn owner_of(db: &Db, instance: &str) -> Result<Option<String>, DbError> {
    Ok(db
        .row(
            "SELECT owner FROM runs WHERE instance = ?1 AND ended_ms IS NULL",
            p![instance],
            |r| r.get::<String>(0),
        )?
        .filter(|o| !o.is_empty()))
}

/// A command for another daemon to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRow {
    pub id: i64,
    /// `kill`.
    pub kind: String,
    pub instance: Option<String>,
    pub machine: Option<String>,
    pub job: Option<String>,
}

/// The channel daemons LISTEN on; the payload names the daemon a command is for.
pub const COMMANDS_CHANNEL: &str = "saltpeter_commands";

/// Queues a command for `daemon` and, on PostgreSQL, wakes it (the notification leaves with
/// the commit; the row is what counts, the daemon also reads its commands on every heartbeat).
pub fn send_command(db: &Db, daemon: &str, c: &CommandRow) -> Result<i64, DbError> {
    let now = db.now_ms_sql();
    let id = db
        .row(
            &format!(
                "INSERT INTO commands (daemon, kind, instance, machine, job, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, {now}) RETURNING id"
            ),
            p![daemon, &c.kind, &c.instance, &c.machine, &c.job],
            |r| r.get::<i64>(0),
        )?
        .unwrap_or_default();
    if db.kind() == Kind::Postgres {
        db.row(
            "SELECT pg_notify(?1, ?2)",
            p![COMMANDS_CHANNEL, daemon],
            |_| Ok(()),
        )?;
    }
    Ok(id)
}

/// Commands for `me` not carried out yet, oldest first.
pub fn pending_commands(db: &Db, me: &str) -> Result<Vec<CommandRow>, DbError> {
    db.query(
        "SELECT id, kind, instance, machine, job FROM commands
         WHERE daemon = ?1 AND done_ms IS NULL ORDER BY id",
        p![me],
        |r| {
            Ok(CommandRow {
                id: r.get(0)?,
                kind: r.get(1)?,
                instance: r.get(2)?,
                machine: r.get(3)?,
                job: r.get(4)?,
            })
        },
    )
}

/// Records what became of a command.
pub fn command_done(db: &Db, id: i64, outcome: &str) -> Result<(), DbError> {
    let now = db.now_ms_sql();
    db.exec(
        &format!("UPDATE commands SET done_ms = {now}, outcome = ?2 WHERE id = ?1"),
        p![id, outcome],
    )?;
    Ok(())
}

/// What became of a command (`None` while pending).
pub fn command_outcome(db: &Db, id: i64) -> Result<Option<String>, DbError> {
    Ok(db
        .row("SELECT outcome FROM commands WHERE id = ?1", p![id], |r| {
            r.get::<Option<String>>(0)
        })?
        .flatten())
}
