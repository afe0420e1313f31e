//! Reads the config directory: every `*.yaml` and `*.yml` file, in name order.

use std::path::{Path, PathBuf};

use super::SourceFile;

/// Files larger than this are refused rather than read into memory.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot read config directory {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether a directory entry is a job file: `*.yaml` or `*.yml`, not hidden. Hidden files are
/// skipped on purpose: editors leave `.#name.yaml` locks and `.name.yaml.swp` files there.
pub fn is_job_file(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Lists and reads the job files of `dir`, sorted by name. A file that cannot be read is
/// returned with the reason, so it is reported and its last good version kept.
pub fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, DirError> {
    let unreadable = |source| DirError::Unreadable {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        // Follow symlinks (config maps are often symlinked); skip directories.
        if is_job_file(&name) && !entry.path().is_dir() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let group = name
                .rsplit_once('.')
                .map_or(name.as_str(), |(stem, _)| stem)
                .to_string();
            SourceFile {
                path: path.display().to_string(),
                group,
                text: read_text(&path),
            }
        })
        .collect())
}

fn read_text(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("file is larger than {MAX_FILE_BYTES} bytes"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    String::from_utf8(bytes)
        .map_err(|e| format!("not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()))
}
