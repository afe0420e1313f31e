//! API tokens kept in the store, so every daemon on a shared store accepts the same ones:
//! added, listed and revoked by `saltpeter token` (straight on the store, as whoever can
//! reach it may already do anything), read by each daemon at start and every heartbeat.
//! Only digests are stored; a token is shown once, when it is made.
//!
//! Must not know: how a token is drawn or digested (`secret.rs`), HTTP, the daemon.

use super::db::{Database, Db, DbError, p};
use super::schema::{self, MIGRATIONS};

/// The schema that brought the `api_tokens` table.
const SINCE_SCHEMA: i64 = 9;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot open the store {store}: {source}")]
    Open { store: String, source: DbError },
    #[error(
        "the store {store} is at schema {found}; tokens need schema {SINCE_SCHEMA}: start this version's daemon on it once"
    )]
    TooOld { store: String, found: i64 },
    #[error(
        "the store {store} is from a newer saltpeter (schema {found}, this one knows {known}): use that version's `saltpeter token`"
    )]
    TooNew {
        store: String,
        found: i64,
        known: usize,
    },
    #[error("a token named `{0}` exists already (revoke it first to replace it)")]
    Exists(String),
    #[error(transparent)]
    Sql(#[from] DbError),
}

/// A stored token, as listed (its digest stays in the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub operator: bool,
    pub created_ms: i64,
}

/// What a daemon checks presented tokens against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    pub digest: [u8; 32],
    pub operator: bool,
}

/// Opens the store `database` names for token commands: never created, never migrated (a
/// command must not upgrade a store that older daemons still use).
pub fn open(database: &Database) -> Result<Db, TokenError> {
    let store = database.shown();
    let open = |source| TokenError::Open {
        store: store.clone(),
        source,
    };
    let db = match database {
        Database::File(path) => super::db::open_sqlite_existing(path, false).map_err(open)?,
        Database::Postgres(_) => Db::open(database).map_err(open)?,
    };
    let found = schema::version(&db).map_err(open)?;
    if found < SINCE_SCHEMA {
        return Err(TokenError::TooOld { store, found });
    }
    if found as usize > MIGRATIONS.len() {
        return Err(TokenError::TooNew {
            store,
            found,
            known: MIGRATIONS.len(),
        });
    }
    Ok(db)
}

/// Stores a new token's digest under `name`.
pub fn add(db: &Db, name: &str, digest: &[u8; 32], operator: bool) -> Result<(), TokenError> {
    let now = db.now_ms_sql();
    let digest = crate::secret::hex(digest);
    let added = db.exec(
        &format!(
            "INSERT INTO api_tokens (name, digest, operator, created_ms) VALUES (?1, ?2, ?3, {now})
             ON CONFLICT (name) DO NOTHING"
        ),
        p![name, digest.as_str(), operator],
    )?;
    match added {
        0 => Err(TokenError::Exists(name.to_string())),
        _ => Ok(()),
    }
}

/// Removes the token `name`; whether there was one.
pub fn revoke(db: &Db, name: &str) -> Result<bool, DbError> {
    Ok(db.exec("DELETE FROM api_tokens WHERE name = ?1", p![name])? > 0)
}

pub fn list(db: &Db) -> Result<Vec<Listed>, DbError> {
    db.query(
        "SELECT name, operator, created_ms FROM api_tokens ORDER BY name",
        p![],
        |r| {
            Ok(Listed {
                name: r.get(0)?,
                operator: r.get(1)?,
                created_ms: r.get(2)?,
            })
        },
    )
}

/// Every stored token's digest; a row whose digest is not 64 hex digits (written by hand) is
/// left out, so it matches nothing.
pub fn digests(db: &Db) -> Result<Vec<Digest>, DbError> {
    let rows = db.query("SELECT digest, operator FROM api_tokens", p![], |r| {
        Ok((r.get::<String>(0)?, r.get::<bool>(1)?))
    })?;
    Ok(rows
        .into_iter()
        .filter_map(|(d, operator)| {
            Some(Digest {
                digest: unhex(&d)?,
                operator,
            })
        })
        .collect())
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_through_hex_and_bad_rows_match_nothing() {
        let d: [u8; 32] = std::array::from_fn(|i| (i * 7) as u8);
        assert_eq!(unhex(&crate::secret::hex(&d)), Some(d));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(&"g".repeat(64)), None);
        assert_eq!(unhex(&"é".repeat(32)), None);
    }
}
