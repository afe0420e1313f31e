//! `saltpeter token`: API tokens kept in the store, shared by every daemon on it. Works on the
//! store the config directory names, without a running daemon (so the first token can be
//! made before the API is reachable).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use saltpeter::config::{self, Loader};
use saltpeter::history::db::Database;
use saltpeter::history::tokens;

/// What to do with the store's tokens.
#[derive(clap::Subcommand)]
pub enum Action {
    /// Make a token and print it (once; only its digest is stored).
    Add {
        /// A name to list and revoke it by (letters, digits, `-`, `_`, `.`).
        name: String,
        /// May read but not change anything (default: an operator, who may).
        #[arg(long)]
        read_only: bool,
    },
    /// The stored tokens: name, role, when made.
    List,
    /// Remove a token; every daemon refuses it from its next heartbeat.
    Revoke { name: String },
}

pub fn run(dir: &Path, action: Action) -> anyhow::Result<ExitCode> {
    let files = config::read_dir(dir)?;
    let loaded = Loader::new(&saltpeter::hostname()).load(&files);
    let database =
        Database::parse(&loaded.config.settings.database).context("saltpeter_config.database")?;
    let db = tokens::open(&database)?;
    match action {
        Action::Add { name, read_only } => {
            if !valid_name(&name) {
                anyhow::bail!(
                    "a token's name is 1-64 letters, digits, `-`, `_` or `.`, found `{name}`"
                );
            }
            let token = saltpeter::secret::draw_api_token()
                .context("cannot draw a token: the kernel's randomness is unavailable")?;
            tokens::add(&db, &name, &saltpeter::secret::digest(&token), !read_only)?;
            eprintln!(
                "token `{name}` ({}) stored in {}; every daemon on it accepts it within one heartbeat (5 s). It is shown once:",
                role(!read_only),
                database.shown()
            );
            println!("{token}");
        }
        Action::List => {
            let listed = tokens::list(&db)?;
            if listed.is_empty() {
                println!("no tokens in {}", database.shown());
            }
            for t in listed {
                let created = jiff::Timestamp::from_millisecond(t.created_ms)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                println!("{}\t{}\t{created}", t.name, role(t.operator));
            }
        }
        Action::Revoke { name } => {
            if !tokens::revoke(&db, &name)? {
                eprintln!("saltpeter: no token named `{name}` in {}", database.shown());
                return Ok(ExitCode::FAILURE);
            }
            eprintln!(
                "token `{name}` revoked; every daemon refuses it from its next heartbeat (within 5 s)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn role(operator: bool) -> &'static str {
    if operator { "operator" } else { "read-only" }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
