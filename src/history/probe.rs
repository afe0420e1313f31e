//! Whether the history database can be written, without changing it: for `saltpeter doctor`,
//! which may run beside a live daemon. A PostgreSQL store is probed by connecting and reading
//! its schema version. An existing file is opened read-write (never created,
//! never migrated) and a write lock is taken and given back (`BEGIN IMMEDIATE; ROLLBACK`); a
//! file that does not exist yet is judged by its directory (or the nearest one that exists),
//! and nothing is created.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::HistoryError;
use super::schema::{MIGRATIONS, MigrateError};

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The file exists and a write transaction could begin; its schema version.
    Writable { schema: i64 },
    /// No file yet; its directory takes new files, or (`exists: false`) can be created (the
    /// daemon creates both at start).
    NotYet { dir: PathBuf, exists: bool },
}

/// Probes the store `database` names: a SQLite file as [`probe`] does, or a PostgreSQL server
/// by connecting and reading its schema version (nothing is written).
pub fn probe_database(
    database: &super::db::Database,
    busy: Duration,
) -> Result<Probe, HistoryError> {
    use super::db::{Database, Db, p};
    let url = match database {
        Database::File(path) => return probe(path, busy),
        Database::Postgres(url) => url,
    };
    let open = |source| HistoryError::Open {
        path: url.shown(),
        source,
    };
    let db = Db::open(database).map_err(open)?;
    let known: bool = db
        .row(
            "SELECT to_regclass('saltpeter_schema') IS NOT NULL",
            p![],
            |r| r.get(0),
        )
        .map_err(open)?
        .unwrap_or(false);
    let schema: i64 = if known {
        db.row("SELECT MAX(version) FROM saltpeter_schema", p![], |r| {
            r.get::<Option<i64>>(0)
        })
        .map_err(open)?
        .flatten()
        .unwrap_or(0)
    } else {
        0
    };
    if schema as usize > MIGRATIONS.len() {
        return Err(HistoryError::Migrate {
            path: url.shown(),
            source: MigrateError::TooNew {
                found: schema,
                known: MIGRATIONS.len(),
            },
        });
    }
    Ok(Probe::Writable { schema })
}

/// Probes `path`, waiting up to `busy` for a daemon's write transaction to end.
pub fn probe(path: &Path, busy: Duration) -> Result<Probe, HistoryError> {
    let shown = path.display().to_string();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !path.exists() {
        // The daemon creates what is missing; judge the nearest directory that exists, with a
        // real file (root passes every permission check; only a write tells a read-only mount),
        // and leave nothing behind.
        let mut existing = dir;
        while !existing.exists() {
            existing = existing.parent().unwrap_or(Path::new("/"));
        }
        let dir_error = |source| HistoryError::Dir {
            dir: dir.display().to_string(),
            source,
        };
        if !existing.is_dir() {
            return Err(dir_error(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", existing.display()),
            )));
        }
        let scratch = existing.join(format!(
            ".{}.doctor-{}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        std::fs::write(&scratch, b"").map_err(dir_error)?;
        let _ = std::fs::remove_file(&scratch);
        return Ok(Probe::NotYet {
            dir: dir.to_path_buf(),
            exists: existing == dir,
        });
    }
    let open = |source: rusqlite::Error| HistoryError::Open {
        path: shown.clone(),
        source: source.into(),
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open)?;
    conn.busy_timeout(busy).map_err(open)?;
    // SQLite falls back to read-only when the file is write-protected.
    if conn.is_readonly("main").map_err(open)? {
        return Err(open(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
            Some("the file is read-only".into()),
        )));
    }
    conn.execute_batch("BEGIN IMMEDIATE").map_err(open)?;
    let schema = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0));
    conn.execute_batch("ROLLBACK").map_err(open)?;
    let schema = schema.map_err(open)?;
    if schema as usize > MIGRATIONS.len() {
        return Err(HistoryError::Migrate {
            path: shown,
            source: MigrateError::TooNew {
                found: schema,
                known: MIGRATIONS.len(),
            },
        });
    }
    Ok(Probe::Writable { schema })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{History, Retention};

    #[test]
    fn a_missing_database_is_judged_by_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/history.db");
        let found = probe(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(
            found,
            Probe::NotYet {
                dir: dir.path().join("sub"),
                exists: false
            }
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "left something"
        );
    }

    #[test]
    fn a_directory_that_is_a_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        let err = probe(&dir.path().join("file/history.db"), Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }

    #[tokio::test]
    async fn a_live_database_is_probed_without_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let history = History::open(&path, Retention::default()).unwrap();
        history.flush().await.unwrap();
        let found = probe(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(
            found,
            Probe::Writable {
                schema: MIGRATIONS.len() as i64
            }
        );
        // The store still works after the probe.
        history.flush().await.unwrap();
    }
}
