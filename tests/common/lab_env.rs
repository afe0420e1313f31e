//! Finds the Salt lab for tests and benchmarks: the `lab.env` that SALTPETER_LAB_ENV names, or a
//! lab started (or found running) by `contrib/lab/lab.sh start`; returns its settings.

use std::collections::BTreeMap;
use std::process::Command;

/// The lab's settings (`MASTER_CONFIG`, `SALT_BIN`, `MINIONS`...).
pub fn lab_env() -> BTreeMap<String, String> {
    let text = match std::env::var("SALTPETER_LAB_ENV") {
        Ok(path) => std::fs::read_to_string(path).expect("SALTPETER_LAB_ENV names a lab.env file"),
        Err(_) => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/lab/lab.sh");
            let out = Command::new(script)
                .arg("start")
                .output()
                .expect("run contrib/lab/lab.sh");
            assert!(
                out.status.success(),
                "lab did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).expect("lab.sh prints text")
        }
    };
    parse_env(&text)
}

/// `KEY=value` lines (values may be single-quoted).
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}
