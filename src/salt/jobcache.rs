//! Reads returns from the master's job cache on disk (Salt's default `local_cache` returner:
//! `<cachedir>/jobs/<h[:2]>/<h[2:]>/<minion>/return.p`, `h` = the jid's hash), so returns
//! emitted while the event bus was disconnected are not lost.

use std::path::{Path, PathBuf};

use rmpv::Value;
use sha2::{Digest, Sha256};

use super::wire::{self, JobRet};

#[derive(Debug, thiserror::Error)]
pub enum JobCacheError {
    #[error("job cache uses hash_type `{0}`; only sha256 (Salt's default) is supported")]
    UnsupportedHash(String),
    #[error("cannot read the job cache at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The directory of one job in the cache.
pub fn job_dir(cachedir: &Path, hash_type: &str, jid: &str) -> Result<PathBuf, JobCacheError> {
    if hash_type != "sha256" {
        return Err(JobCacheError::UnsupportedHash(hash_type.to_string()));
    }
    let hash: String = Sha256::digest(jid.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(cachedir.join("jobs").join(&hash[..2]).join(&hash[2..]))
}

/// Every minion's cached return for `jid`, as the same typed view the event bus gives.
/// A job the cache does not know (yet) has no returns.
pub fn returns(cachedir: &Path, hash_type: &str, jid: &str) -> Result<Vec<JobRet>, JobCacheError> {
    let dir = job_dir(cachedir, hash_type, jid)?;
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(JobCacheError::Io { path: dir, source }),
    };
    let fun = load_fun(&dir);
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path().join("return.p");
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Ok(value) = rmpv::decode::read_value(&mut bytes.as_slice()) else {
            continue;
        };
        let minion = entry.file_name().to_string_lossy().into_owned();
        out.push(JobRet {
            id: minion,
            jid: jid.to_string(),
            fun: fun.clone(),
            fun_args: Vec::new(),
            ret: wire::get(&value, "return").cloned().unwrap_or(Value::Nil),
            retcode: wire::get(&value, "retcode").and_then(Value::as_i64),
            success: wire::get(&value, "success").and_then(Value::as_bool),
            stamp: None,
            out: wire::get(&value, "out").map(wire::value_text),
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn load_fun(dir: &Path) -> String {
    std::fs::read(dir.join(".load.p"))
        .ok()
        .and_then(|b| rmpv::decode::read_value(&mut b.as_slice()).ok())
        .and_then(|v| wire::get(&v, "fun").map(wire::value_text))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_local_cache_layout() {
        let cache = tempfile::tempdir().unwrap();
        let jid = "20261126054457231059";
        let dir = job_dir(cache.path(), "sha256", jid).unwrap();
        assert!(dir.starts_with(cache.path().join("jobs")));
        assert_eq!(dir.parent().unwrap().file_name().unwrap().len(), 2);
        std::fs::create_dir_all(dir.join("m1")).unwrap();
        let ret = Value::Map(vec![
            ("return".into(), "hi".into()),
            ("retcode".into(), 0.into()),
            ("success".into(), true.into()),
        ]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &ret).unwrap();
        std::fs::write(dir.join("m1/return.p"), bytes).unwrap();
        let got = returns(cache.path(), "sha256", jid).unwrap();
        assert_eq!(
            (got[0].id.as_str(), got[0].retcode, got[0].ret.as_str()),
            ("m1", Some(0), Some("hi"))
        );
        assert!(
            returns(cache.path(), "sha256", "20990101000000000000")
                .unwrap()
                .is_empty()
        );
        assert!(returns(cache.path(), "md5", jid).is_err());
    }
}
