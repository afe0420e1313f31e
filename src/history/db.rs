//! The store's database connection, SQLite (a file, the embedded default) or PostgreSQL (a
//! `postgres://` URL, shared by several daemons), behind one small API so the store's SQL is
//! written once: numbered `?N` placeholders and portable SQL (`ON CONFLICT`, `greatest`/`least`,
//! `IS DISTINCT FROM`, `octet_length`), parameters and columns as a few value kinds. Every
//! difference between the two dialects and drivers lives here.
//!
//! Must not know: runs, slots, or any table; HTTP, Salt, the wrapper protocol.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Where the store lives, as `saltpeter_config.database` says.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    File(PathBuf),
    Postgres(PgUrl),
}

/// A PostgreSQL connection URL (libpq's form). `sslrootcert=FILE` names the CA that signs the
/// server's certificate (otherwise the public web roots); `sslmode` is libpq's.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    url: String,
    root_cert: Option<PathBuf>,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

impl PgUrl {
    /// The URL with its password replaced, for logs and errors.
    pub fn shown(&self) -> String {
        redact(&self.url)
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_string(),
    };
    let user = auth.split_once(':').map_or(auth, |(u, _)| u);
    let shown_auth = if auth.contains(':') {
        format!("{user}:***")
    } else {
        user.to_string()
    };
    // A `password=` option in the query is redacted too.
    let host = match host.split_once("password=") {
        Some((before, after)) => {
            let tail = after.find('&').map_or("", |i| &after[i..]);
            format!("{before}password=***{tail}")
        }
        None => host.to_string(),
    };
    format!("{scheme}://{shown_auth}@{host}")
}

impl Database {
    /// A `postgres://` or `postgresql://` URL is PostgreSQL; anything else is a file path.
    pub fn parse(s: &str) -> Result<Database, DbError> {
        let lower = s.trim_start().to_ascii_lowercase();
        if !(lower.starts_with("postgres://") || lower.starts_with("postgresql://")) {
            return Ok(Database::File(PathBuf::from(s)));
        }
        // `sslrootcert` is libpq's, not the driver's: taken out here and given to rustls.
        let (base, query) = s.split_once('?').unwrap_or((s, ""));
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslrootcert", file)) => root_cert = Some(PathBuf::from(file)),
                _ => kept.push(pair),
            }
        }
        let url = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let parsed = PgUrl { url, root_cert };
        // Refused at load, not at the first connection.
        parsed
            .url
            .parse::<postgres::Config>()
            .map_err(|e| DbError::Config(format!("{}: {e}", parsed.shown())))?;
        Ok(Database::Postgres(parsed))
    }

    /// For logs and errors: a path, or the URL without its password.
    pub fn shown(&self) -> String {
        match self {
            Database::File(p) => p.display().to_string(),
            Database::Postgres(u) => u.shown(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", pg_text(.0))]
    Postgres(#[from] postgres::Error),
    #[error("column {index}: expected {expected}, found {found}")]
    Type {
        index: usize,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{0}")]
    Config(String),
    /// The engine ended the transaction on its own (SQLite rolls back on some errors, a full
    /// disk among them); nothing more may run in it, or it would be committed piecemeal.
    #[error("the transaction was rolled back by the database")]
    Aborted,
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
}

fn pg_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.to_string(),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

impl DbError {
    /// The storage itself failed (a full disk, a lost connection, a server shutting down):
    /// nothing in the transaction can be trusted to be stored; other errors concern one
    /// statement.
    pub fn is_storage_failure(&self) -> bool {
        match self {
            DbError::Sqlite(e) => {
                use rusqlite::ErrorCode as C;
                matches!(
                    e.sqlite_error_code(),
                    Some(
                        C::DiskFull
                            | C::SystemIoFailure
                            | C::ReadOnly
                            | C::CannotOpen
                            | C::DatabaseBusy
                            | C::DatabaseLocked
                            | C::OutOfMemory
                            | C::DatabaseCorrupt
                            | C::NotADatabase
                    )
                )
            }
            DbError::Postgres(e) => match e.code() {
                // No SQL state: the connection or its I/O failed.
                None => true,
                Some(code) => {
                    let c = code.code();
                    // Connection (08), resources (53), operator intervention (57), system (58),
                    // serialization and deadlock (40), read-only (25006).
                    c.starts_with("08")
                        || c.starts_with("53")
                        || c.starts_with("57")
                        || c.starts_with("58")
                        || c.starts_with("40")
                        || c == "25006"
                }
            },
            DbError::Type { .. } => false,
            DbError::Config(_) | DbError::Aborted | DbError::Thread(_) => true,
        }
    }
}

/// A statement's parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum P<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl From<i64> for P<'_> {
    fn from(v: i64) -> Self {
        P::Int(v)
    }
}
impl From<i32> for P<'_> {
    fn from(v: i32) -> Self {
        P::Int(v.into())
    }
}
impl From<u32> for P<'_> {
    fn from(v: u32) -> Self {
        P::Int(v.into())
    }
}
impl From<bool> for P<'_> {
    fn from(v: bool) -> Self {
        P::Int(v.into())
    }
}
impl From<f64> for P<'_> {
    fn from(v: f64) -> Self {
        P::Real(v)
    }
}
impl<'a> From<&'a str> for P<'a> {
    fn from(v: &'a str) -> Self {
        P::Text(v)
    }
}
impl<'a> From<&'a String> for P<'a> {
    fn from(v: &'a String) -> Self {
        P::Text(v)
    }
}
impl<'a> From<&'a [u8]> for P<'a> {
    fn from(v: &'a [u8]) -> Self {
        P::Blob(v)
    }
}
impl<'a, T: Copy + Into<P<'a>>> From<&T> for P<'a> {
    fn from(v: &T) -> Self {
        (*v).into()
    }
}
impl<'a> From<&'a Option<String>> for P<'a> {
    fn from(v: &'a Option<String>) -> Self {
        v.as_deref().into()
    }
}
impl<'a, T: Into<P<'a>>> From<Option<T>> for P<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(P::Null, Into::into)
    }
}

/// Parameters for [`Db`]'s statements: `p![a, b]` is `&[P::from(a), P::from(b)]`.
macro_rules! p {
    ($($x:expr),* $(,)?) => { &[$($crate::history::db::P::from($x)),*][..] };
}
pub(crate) use p;

/// A column's value.
#[derive(Clone, Debug, PartialEq)]
pub enum V {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl V {
    fn kind(&self) -> &'static str {
        match self {
            V::Null => "NULL",
            V::Int(_) => "an integer",
            V::Real(_) => "a real",
            V::Text(_) => "text",
            V::Blob(_) => "a blob",
        }
    }
}

/// A result row.
#[derive(Debug)]
pub struct Row(Vec<V>);

impl Row {
    pub fn get<T: FromV>(&self, i: usize) -> Result<T, DbError> {
        T::from_v(self.0.get(i).unwrap_or(&V::Null), i)
    }
}

/// A Rust value read from a column.
pub trait FromV: Sized {
    fn from_v(v: &V, index: usize) -> Result<Self, DbError>;
}

fn mismatch<T>(index: usize, expected: &'static str, v: &V) -> Result<T, DbError> {
    Err(DbError::Type {
        index,
        expected,
        found: v.kind(),
    })
}

impl FromV for i64 {
    fn from_v(v: &V, i: usize) -> Result<Self, DbError> {
        match v {
            V::Int(n) => Ok(*n),
            other => mismatch(i, "an integer", other),
        }
    }
}
impl FromV for u64 {
    fn from_v(v: &V, i: usize) -> Result<Self, DbError> {
        i64::from_v(v, i).map(|n| n.max(0) as u64)
    }
}
impl FromV for u32 {
    fn from_v(v: &V, i: usize) -> Result<Self, DbError> {
        i64::from_v(v, i).map(|n| n.clamp(0, u32::MAX.into()) as u32)
    }
}
impl FromV for bool {
    fn from_v(v: &V, i: usize) -> Result<Self, DbError> {
        i64::from_v(v, i).map(|n| n != 0)
    }
}
impl FromV for f64 {
    fn from_v(v: &V, i: usize) -> Result<Self, DbError> {
        match v {
            V::Real(n) => Ok(*n),
            V::Int(n) => Ok(*n as f64),
            other => mismatch(i, "a real", other),
        }
    }
}
impl FromV for String {
    fn from_v(v: &V, i: usize) -> Result<Self, DbError> {
        match v {
            V::Text(s) => Ok(s.clone()),
            other => mismatch(i, "text", other),
        }
    }
}
impl FromV for Vec<u8> {
    fn from_v(v: &V, i: usize) -> Result<Self, DbError> {
        match v {
            V::Blob(b) => Ok(b.clone()),
            V::Text(s) => Ok(s.clone().into_bytes()),
            other => mismatch(i, "a blob", other),
        }
    }
}
impl<T: FromV> FromV for Option<T> {
    fn from_v(v: &V, i: usize) -> Result<Self, DbError> {
        match v {
            V::Null => Ok(None),
            v => T::from_v(v, i).map(Some),
        }
    }
}

/// Which engine a [`Db`] speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// One connection. Not shared between threads: each owner (the store's thread, a reader) opens
/// its own.
pub struct Db {
    inner: Inner,
    in_tx: Cell<bool>,
    /// SQLite's checkpoints, when a thread of their own runs them.
    checkpointer: Option<Checkpointer>,
}

/// What the writer's WAL hook and the checkpoint thread share.
#[derive(Default)]
struct Checkpoints {
    /// WAL pages after the last commit.
    pages: AtomicU32,
    due: AtomicBool,
    stop: AtomicBool,
    /// Checkpoints run (tests wait on it).
    done: AtomicU64,
}

/// The checkpoint thread, stopped with the connection.
struct Checkpointer {
    state: Arc<Checkpoints>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

enum Inner {
    Sqlite(rusqlite::Connection),
    Pg(Box<RefCell<Pg>>),
}

struct Pg {
    url: PgUrl,
    client: Option<postgres::Client>,
    /// Prepared statements by their SQL as written (with `?N`), for this connection.
    statements: HashMap<String, postgres::Statement>,
}

/// How long a connection attempt to PostgreSQL may take.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Pg {
    fn connect(url: &PgUrl) -> Result<postgres::Client, DbError> {
        let mut config: postgres::Config = url
            .url
            .parse()
            .map_err(|e| DbError::Config(format!("{}: {e}", url.shown())))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(PG_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("saltpeter");
        }
        // Dead peers are noticed by the kernel within a minute, not after two hours.
        config.keepalives_idle(Duration::from_secs(30));
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(url)?);
        Ok(config.connect(tls)?)
    }

    fn client(&mut self) -> Result<&mut postgres::Client, DbError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.statements.clear();
            self.client = None;
            self.client = Some(Pg::connect(&self.url)?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, DbError> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        let st = self.client()?.prepare(&dollars(sql))?;
        self.statements.insert(sql.to_string(), st.clone());
        Ok(st)
    }
}

fn tls_config(url: &PgUrl) -> Result<rustls::ClientConfig, DbError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &url.root_cert {
        Some(file) => {
            let certs = CertificateDer::pem_file_iter(file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| DbError::Config(format!("sslrootcert {}: {e}", file.display())))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| DbError::Config(format!("sslrootcert {}: {e}", file.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `?N` → `$N`, and a bare `?` → the next number, outside quoted strings.
fn dollars(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quoted = false;
    let mut next = 1;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                out.push('$');
                if chars.peek().is_some_and(char::is_ascii_digit) {
                    while let Some(d) = chars.next_if(char::is_ascii_digit) {
                        out.push(d);
                    }
                } else {
                    out.push_str(&next.to_string());
                    next += 1;
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// PostgreSQL refuses NUL in text; a wrapper may print one. It becomes SUB (0x1A, "substitute"),
/// one byte for one, so stored offsets stay true.
fn pg_text_param(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{1a}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

impl postgres::types::ToSql for P<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type as T;
        match *self {
            P::Null => Ok(postgres::types::IsNull::Yes),
            P::Int(n) => match *ty {
                T::INT8 => n.to_sql(ty, out),
                T::INT4 => i32::try_from(n)?.to_sql(ty, out),
                T::INT2 => i16::try_from(n)?.to_sql(ty, out),
                T::BOOL => (n != 0).to_sql(ty, out),
                T::FLOAT8 => (n as f64).to_sql(ty, out),
                T::FLOAT4 => (n as f32).to_sql(ty, out),
                _ => n.to_string().to_sql(&T::TEXT, out),
            },
            P::Real(x) => match *ty {
                T::FLOAT4 => (x as f32).to_sql(ty, out),
                _ => x.to_sql(&T::FLOAT8, out),
            },
            P::Text(s) => pg_text_param(s).as_ref().to_sql(&T::TEXT, out),
            P::Blob(b) => b.to_sql(&T::BYTEA, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn pg_row(row: &postgres::Row) -> Result<Row, DbError> {
    use postgres::types::Type as T;
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let v = match *col.type_() {
            T::INT8 => row.try_get::<_, Option<i64>>(i)?.map(V::Int),
            T::INT4 => row.try_get::<_, Option<i32>>(i)?.map(|n| V::Int(n.into())),
            T::INT2 => row.try_get::<_, Option<i16>>(i)?.map(|n| V::Int(n.into())),
            T::BOOL => row.try_get::<_, Option<bool>>(i)?.map(|b| V::Int(b.into())),
            T::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(V::Real),
            T::FLOAT4 => row.try_get::<_, Option<f32>>(i)?.map(|x| V::Real(x.into())),
            T::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(V::Blob),
            T::VOID => None,
            _ => row.try_get::<_, Option<String>>(i)?.map(V::Text),
        };
        out.push(v.unwrap_or(V::Null));
    }
    Ok(Row(out))
}

fn sqlite_row(row: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Row> {
    use rusqlite::types::ValueRef as R;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(match row.get_ref(i)? {
            R::Null => V::Null,
            R::Integer(n) => V::Int(n),
            R::Real(x) => V::Real(x),
            R::Text(t) => V::Text(String::from_utf8_lossy(t).into_owned()),
            R::Blob(b) => V::Blob(b.to_vec()),
        });
    }
    Ok(Row(out))
}

impl rusqlite::ToSql for P<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput as O, ValueRef as R};
        Ok(match *self {
            P::Null => O::Borrowed(R::Null),
            P::Int(n) => O::Borrowed(R::Integer(n)),
            P::Real(x) => O::Borrowed(R::Real(x)),
            P::Text(s) => O::Borrowed(R::Text(s.as_bytes())),
            P::Blob(b) => O::Borrowed(R::Blob(b)),
        })
    }
}

fn pg_params<'a>(p: &'a [P<'a>]) -> Vec<&'a (dyn postgres::types::ToSql + Sync)> {
    p.iter()
        .map(|x| x as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

impl Db {
    /// Opens a connection: a SQLite file (created if missing; WAL, foreign keys on) or a
    /// PostgreSQL server.
    pub fn open(database: &Database) -> Result<Db, DbError> {
        match database {
            Database::File(path) => Db::sqlite(rusqlite::Connection::open(path)?),
            Database::Postgres(url) => Ok(Db {
                inner: Inner::Pg(Box::new(RefCell::new(Pg {
                    client: Some(Pg::connect(url)?),
                    url: url.clone(),
                    statements: HashMap::new(),
                }))),
                in_tx: Cell::new(false),
                checkpointer: None,
            }),
        }
    }

    /// Wraps an open SQLite connection, with the settings and functions the store's SQL needs.
    pub fn sqlite(conn: rusqlite::Connection) -> Result<Db, DbError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // A group commit of thousands of targets' rows and output pages must fit in SQLite's
        // page cache (its default is 2 MiB), or it spills and re-reads them.
        conn.pragma_update(None, "cache_size", -8_192)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        add_functions(&conn)?;
        Ok(Db {
            inner: Inner::Sqlite(conn),
            in_tx: Cell::new(false),
            checkpointer: None,
        })
    }

    /// SQLite: checkpoints move out of commits into a thread of their own. By default one
    /// runs inside every commit that leaves 1,000 pages in the WAL, and everything waiting for
    /// that commit (acknowledgements) waits for the copy and its two fsyncs too. Here a commit
    /// that leaves `pages` or more only wakes the checkpointer, which copies passively (never
    /// blocking the writer) on a connection of its own; the writer starts the WAL over at its
    /// next commit after a complete copy. Fewer, larger checkpoints also copy a page rewritten
    /// by many commits (a target's row, a streaming target's last output page) once. Nothing
    /// to do on PostgreSQL or in memory.
    pub fn checkpoint_in_background(&mut self, pages: u32) -> Result<(), DbError> {
        let Inner::Sqlite(conn) = &mut self.inner else {
            return Ok(());
        };
        let Some(path) = conn.path().filter(|p| !p.is_empty()).map(PathBuf::from) else {
            return Ok(());
        };
        let own = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let state = Arc::new(Checkpoints::default());
        let worker = state.clone();
        let thread = std::thread::Builder::new()
            .name("history-checkpoint".into())
            .spawn(move || {
                while !worker.stop.load(Ordering::Acquire) {
                    if worker.due.swap(false, Ordering::AcqRel) {
                        if let Err(e) = own.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                            tracing::warn!(error = %e, "history: a WAL checkpoint failed; it is tried again after a later commit");
                        }
                        worker.done.fetch_add(1, Ordering::AcqRel);
                    } else {
                        std::thread::park();
                    }
                }
            })
?;
        let (hook_state, waker) = (state.clone(), thread.thread().clone());
        conn.wal_hook(Some(
            move |_: &mut rusqlite::hooks::Wal, n: std::ffi::c_int| {
                hook_state.pages.store(n.max(0) as u32, Ordering::Relaxed);
                if n.max(0) as u32 >= pages && !hook_state.due.swap(true, Ordering::AcqRel) {
                    waker.unpark();
                }
                Ok(())
            },
        ))?;
        // A WAL grown by one huge batch is cut back to this once it starts over.
        conn.pragma_update(None, "journal_size_limit", 64 << 20)?;
        self.checkpointer = Some(Checkpointer {
            state,
            thread: Some(thread),
        });
        Ok(())
    }

    pub fn kind(&self) -> Kind {
        match self.inner {
            Inner::Sqlite(_) => Kind::Sqlite,
            Inner::Pg(_) => Kind::Postgres,
        }
    }

    /// A SQLite connection, unless its transaction vanished under it.
    fn sqlite_conn<'c>(
        &self,
        c: &'c rusqlite::Connection,
    ) -> Result<&'c rusqlite::Connection, DbError> {
        if self.in_tx.get() && c.is_autocommit() {
            return Err(DbError::Aborted);
        }
        Ok(c)
    }

    /// Runs one statement; the rows it changed.
    pub fn exec(&self, sql: &str, p: &[P<'_>]) -> Result<u64, DbError> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(self
                .sqlite_conn(c)?
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(p))? as u64),
            Inner::Pg(pg) => {
                let mut pg = pg.borrow_mut();
                let st = pg.statement(sql)?;
                Ok(pg.client()?.execute(&st, &pg_params(p))?)
            }
        }
    }

    /// Runs a query; `f` turns each row into a value.
    pub fn query<T>(
        &self,
        sql: &str,
        p: &[P<'_>],
        mut f: impl FnMut(&Row) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        match &self.inner {
            Inner::Sqlite(c) => {
                let mut st = self.sqlite_conn(c)?.prepare_cached(sql)?;
                let n = st.column_count();
                let mut rows = st.query(rusqlite::params_from_iter(p))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(f(&sqlite_row(r, n)?)?);
                }
                Ok(out)
            }
            Inner::Pg(pg) => {
                let mut pg = pg.borrow_mut();
                let st = pg.statement(sql)?;
                let rows = pg.client()?.query(&st, &pg_params(p))?;
                rows.iter().map(|r| f(&pg_row(r)?)).collect()
            }
        }
    }

    /// The query's first row, if any.
    pub fn row<T>(
        &self,
        sql: &str,
        p: &[P<'_>],
        f: impl FnMut(&Row) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        Ok(self.query(sql, p, f)?.into_iter().next())
    }

    /// Runs statements without parameters (schema changes, session settings).
    pub fn batch(&self, sql: &str) -> Result<(), DbError> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Pg(pg) => Ok(pg.borrow_mut().client()?.batch_execute(sql)?),
        }
    }

    /// Begins a transaction. On PostgreSQL a lost connection is opened again here (never in
    /// the middle of a transaction).
    pub fn begin(&self) -> Result<(), DbError> {
        if self.in_tx.get() {
            let _ = self.rollback();
        }
        match &self.inner {
            Inner::Sqlite(c) => c.execute_batch("BEGIN")?,
            Inner::Pg(pg) => pg.borrow_mut().client()?.batch_execute("BEGIN")?,
        }
        self.in_tx.set(true);
        Ok(())
    }

    /// Begins a transaction that writes: on SQLite the write lock is taken first, so two
    /// processes cannot both read a row as free before either writes.
    pub fn begin_write(&self) -> Result<(), DbError> {
        match &self.inner {
            Inner::Sqlite(c) => {
                if self.in_tx.get() {
                    let _ = self.rollback();
                }
                c.execute_batch("BEGIN IMMEDIATE")?;
                self.in_tx.set(true);
                Ok(())
            }
            Inner::Pg(_) => self.begin(),
        }
    }

    pub fn commit(&self) -> Result<(), DbError> {
        let r = self.batch("COMMIT");
        if r.is_ok() || !self.still_in_transaction() {
            self.in_tx.set(false);
        }
        r
    }

    /// Ends the transaction, if the database still has one (never reconnects to roll back).
    pub fn rollback(&self) -> Result<(), DbError> {
        self.in_tx.set(false);
        if !self.still_in_transaction() {
            return Ok(());
        }
        match &self.inner {
            Inner::Sqlite(c) => Ok(c.execute_batch("ROLLBACK")?),
            Inner::Pg(pg) => match pg.borrow_mut().client.as_mut() {
                Some(c) => Ok(c.batch_execute("ROLLBACK")?),
                None => Ok(()),
            },
        }
    }

    pub fn in_transaction(&self) -> bool {
        self.in_tx.get() && self.still_in_transaction()
    }

    fn still_in_transaction(&self) -> bool {
        match &self.inner {
            Inner::Sqlite(c) => !c.is_autocommit(),
            // A failed COMMIT on PostgreSQL ends the transaction, unless the connection is
            // gone, when there is nothing to roll back.
            Inner::Pg(pg) => pg.borrow().client.as_ref().is_some_and(|c| !c.is_closed()),
        }
    }

    /// SQL for the database server's clock in unix milliseconds: leases are judged by this one
    /// clock, never by the daemons' own (which may disagree).
    pub fn now_ms_sql(&self) -> &'static str {
        match self.kind() {
            Kind::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Kind::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// Bytes the database takes (file pages, or the PostgreSQL database's size).
    pub fn size(&self) -> Result<u64, DbError> {
        let one = |sql: &str| -> Result<i64, DbError> {
            Ok(self.row(sql, p![], |r| r.get(0))?.unwrap_or(0))
        };
        Ok(match self.kind() {
            Kind::Sqlite => one("PRAGMA page_count")? * one("PRAGMA page_size")?,
            Kind::Postgres => one("SELECT pg_database_size(current_database())")?,
        }
        .max(0) as u64)
    }
}

/// Sends each notification's payload on `channel` (PostgreSQL's `LISTEN`) to `wake`, from a
/// thread with a connection of its own that reconnects after a loss (and then sends an
/// empty payload: what was notified meanwhile is unknown). A wake-up only: whoever is woken
/// reads the rows that count. Ends once `wake` is closed.
pub fn listen(url: PgUrl, channel: &'static str, wake: tokio::sync::mpsc::Sender<String>) {
    let spawned = std::thread::Builder::new()
        .name("pg-listen".into())
        .spawn(move || {
            let mut failures = 0u32;
            while !wake.is_closed() {
                let mut client = match Pg::connect(&url) {
                    Ok(c) => c,
                    Err(e) => {
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(error = %e, "cannot LISTEN for commands; retrying (commands are still read at every heartbeat)");
                        }
                        std::thread::sleep(Duration::from_secs(2));
                        continue;
                    }
                };
                if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")) {
                    tracing::warn!(error = %e, "LISTEN failed; retrying");
                    std::thread::sleep(Duration::from_secs(2));
                    continue;
                }
                if std::mem::take(&mut failures) > 0 {
                    let _ = wake.blocking_send(String::new());
                }
                // Wakes at least every 30 s to notice that the daemon has stopped.
                loop {
                    let mut notes = client.notifications();
                    let mut it = notes.timeout_iter(Duration::from_secs(30));
                    match fallible_next(&mut it) {
                        Ok(Some(n)) => {
                            if wake.blocking_send(n.payload().to_string()).is_err() {
                                return;
                            }
                        }
                        Ok(None) if wake.is_closed() => return,
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "the LISTEN connection was lost; reconnecting");
                            failures = 1;
                            break;
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the LISTEN thread; commands are read at every heartbeat only");
    }
}

fn fallible_next<I>(it: &mut I) -> Result<Option<I::Item>, I::Error>
where
    I: postgres::fallible_iterator::FallibleIterator,
{
    it.next()
}

/// `greatest` and `least` as PostgreSQL has them (NULLs ignored), so one SQL text serves both.
fn add_functions(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    use rusqlite::types::Value;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    for (name, want_greater) in [("greatest", true), ("least", false)] {
        conn.create_scalar_function(name, -1, flags, move |ctx| {
            let mut best: Option<i64> = None;
            for i in 0..ctx.len() {
                if let Some(v) = ctx.get::<Option<i64>>(i)? {
                    best = Some(match best {
                        Some(b) if (v > b) == want_greater => v,
                        Some(b) => b,
                        None => v,
                    });
                }
            }
            Ok(best.map_or(Value::Null, Value::Integer))
        })?;
    }
    Ok(())
}

/// Opens a SQLite file read-only or read-write without creating it (for probes and readers).
pub fn open_sqlite_existing(path: &Path, read_only: bool) -> Result<Db, DbError> {
    use rusqlite::OpenFlags as F;
    let flags = if read_only {
        F::SQLITE_OPEN_READ_ONLY | F::SQLITE_OPEN_NO_MUTEX
    } else {
        F::SQLITE_OPEN_READ_WRITE | F::SQLITE_OPEN_NO_MUTEX
    };
    let conn = rusqlite::Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    add_functions(&conn)?;
    Ok(Db {
        inner: Inner::Sqlite(conn),
        in_tx: Cell::new(false),
        checkpointer: None,
    })
}

/// Test support: the store's tests run against SQLite, and against PostgreSQL too when
/// `SALTPETER_TEST_POSTGRES` names a server (`postgres://user@host:port/db`; CI starts one).
#[cfg(test)]
pub mod testing {
    use super::*;

    /// The PostgreSQL server tests may use, if any.
    pub fn server() -> Option<String> {
        std::env::var("SALTPETER_TEST_POSTGRES")
            .ok()
            .filter(|s| !s.is_empty())
    }

    /// The database for a test's directory: a file in it, or on PostgreSQL a database of its
    /// own named after it (created empty the first time; the same one when opened again).
    pub fn database(dir: &Path) -> Database {
        let Some(server) = server() else {
            return Database::File(dir.join("sub/history.db"));
        };
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        dir.hash(&mut h);
        std::process::id().hash(&mut h);
        let name = format!("sp_test_{:016x}", h.finish());
        // On a thread of its own: the client may not block inside a test's runtime.
        let (admin_url, db_name) = (server.clone(), name.clone());
        std::thread::spawn(move || {
            let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls)
                .unwrap_or_else(|e| panic!("SALTPETER_TEST_POSTGRES={admin_url}: {e}"));
            let exists = admin
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db_name])
                .unwrap()
                .is_some();
            if !exists {
                admin
                    .batch_execute(&format!("CREATE DATABASE {db_name}"))
                    .unwrap();
            }
        })
        .join()
        .expect("the test database is created");
        let base = server.split_once('?').map_or(server.as_str(), |(b, _)| b);
        let root = base.rsplit_once('/').map_or(base, |(r, _)| r);
        Database::parse(&format!("{root}/{name}?sslmode=disable")).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_strings() {
        assert_eq!(dollars("a = ?1 AND b = ?12"), "a = $1 AND b = $12");
        assert_eq!(dollars("a = ? AND b = ?"), "a = $1 AND b = $2");
        assert_eq!(dollars("a = '?' AND b = ?2"), "a = '?' AND b = $2");
    }

    #[test]
    fn urls_are_told_apart_from_paths_and_shown_without_secrets() {
        assert!(matches!(
            Database::parse("/var/lib/saltpeter/history.db").unwrap(),
            Database::File(_)
        ));
        let db = Database::parse(
            "postgres://sp:hunter2@db.example:5432/saltpeter?sslmode=require&sslrootcert=/etc/ca.pem",
        )
        .unwrap();
        let Database::Postgres(url) = &db else {
            panic!("not postgres: {db:?}")
        };
        assert_eq!(url.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert!(!url.url.contains("sslrootcert"));
        let shown = db.shown();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("sp:***@db.example"), "{shown}");
        assert!(!format!("{db:?}").contains("hunter2"));
        assert_eq!(
            redact("postgresql://u@h/d?password=x&sslmode=disable"),
            "postgresql://u@h/d?password=***&sslmode=disable"
        );
        assert!(Database::parse("postgres://h/d?sslmode=nonsense").is_err());
    }

    #[test]
    fn sqlite_has_greatest_and_least_that_ignore_nulls() {
        let db = Db::sqlite(rusqlite::Connection::open_in_memory().unwrap()).unwrap();
        let got = db
            .row(
                "SELECT greatest(1, NULL, 3), least(NULL, 5, 2), greatest(NULL, NULL)",
                p![],
                |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?, r.get::<Option<i64>>(2)?)),
            )
            .unwrap();
        assert_eq!(got, Some((3, 2, None)));
    }

    /// With checkpoints in the background, commits leave the WAL growing (no checkpoint
    /// inside them) until it reaches the threshold; then the checkpoint thread copies it and
    /// the next commit starts the WAL over.
    #[test]
    fn checkpoints_run_in_their_own_thread_past_the_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&Database::File(dir.path().join("w.db"))).unwrap();
        db.checkpoint_in_background(2_000).unwrap();
        db.batch("CREATE TABLE t (a TEXT)").unwrap();
        let state = db.checkpointer.as_ref().unwrap().state.clone();
        let blob = "x".repeat(3000);
        let insert = |n: usize| {
            for _ in 0..n {
                db.begin().unwrap();
                db.exec("INSERT INTO t VALUES (?1)", p![blob.as_str()])
                    .unwrap();
                db.commit().unwrap();
            }
        };
        let pages = || state.pages.load(Ordering::Relaxed);
        while pages() < 1_500 {
            insert(1);
        }
        // SQLite's own would have checkpointed (and started over) at 1,000 pages.
        assert_eq!(state.done.load(Ordering::Acquire), 0, "under the threshold");
        while pages() < 2_000 {
            insert(1);
        }
        // The copy runs while the writer is idle; the next commit starts the WAL over.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while state.done.load(Ordering::Acquire) == 0 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        insert(1);
        assert!(pages() < 10, "the WAL started over: {}", pages());
        drop(db); // stops and joins the thread
    }

    #[test]
    fn values_round_trip_through_sqlite() {
        let db = Db::sqlite(rusqlite::Connection::open_in_memory().unwrap()).unwrap();
        db.batch("CREATE TABLE t (a INTEGER, b TEXT, c BLOB, d REAL)")
            .unwrap();
        let blob: &[u8] = &[0, 1, 2];
        db.exec(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
            p![7_i64, "x", blob, 1.5],
        )
        .unwrap();
        db.exec(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
            p![None::<i64>, None::<&str>, None::<&[u8]>, None::<f64>],
        )
        .unwrap();
        let rows = db
            .query("SELECT a, b, c, d FROM t ORDER BY a IS NULL", p![], |r| {
                Ok((
                    r.get::<Option<i64>>(0)?,
                    r.get::<Option<String>>(1)?,
                    r.get::<Option<Vec<u8>>>(2)?,
                    r.get::<Option<f64>>(3)?,
                ))
            })
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (Some(7), Some("x".into()), Some(vec![0, 1, 2]), Some(1.5)),
                (None, None, None, None)
            ]
        );
        assert!(matches!(
            db.row("SELECT b FROM t", p![], |r| r.get::<i64>(0)),
            Err(DbError::Type { index: 0, .. })
        ));
    }
}
