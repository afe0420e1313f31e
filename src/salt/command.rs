//! The Salt commands saltpeter publishes, built from plain values (the caller knows jobs; this
//! knows Salt's functions and their keyword arguments): the wrapper's launch through
//! `cmd.run_all`, a legacy job's `cmd.run`, and the `test.ping` that resolves targets.

use rmpv::Value;

use super::wire::{Publish, Tgt};

/// `cmd.run_all` of the wrapper at `wrapper_path`, with `env` as a real keyword argument.
/// `SP_MACHINE_ID` is rendered on each minion from its own grains (one publish serves every
/// target; the host name need not match the minion id).
pub fn wrapper_launch(
    tgt: Tgt,
    tgt_type: &str,
    wrapper_path: &str,
    env: Vec<(String, String)>,
) -> Publish {
    let mut p = Publish::new(tgt, tgt_type, "cmd.run_all");
    let cmd = format!(
        "SP_MACHINE_ID={{{{ grains['id'] | tojson }}}} exec {}",
        shell_quote(wrapper_path)
    );
    p.kwargs.insert("cmd".into(), Value::from(cmd));
    p.kwargs.insert("template".into(), Value::from("jinja"));
    p.kwargs.insert("python_shell".into(), Value::from(true));
    p.kwargs.insert("env".into(), env_map(env));
    p
}

/// What a legacy job (`use_wrapper: false`) runs through Salt's own `cmd.run`.
#[derive(Clone, Debug, Default)]
pub struct CmdRun<'a> {
    pub command: &'a str,
    pub cwd: Option<&'a str>,
    pub runas: Option<&'a str>,
    pub timeout: Option<u64>,
    pub env: Vec<(String, String)>,
}

/// `cmd.run` of the command itself, with `cwd`, `runas`, `timeout` and `env` as real keyword
/// arguments.
pub fn cmd_run(tgt: Tgt, tgt_type: &str, run: CmdRun<'_>) -> Publish {
    let mut p = Publish::new(tgt, tgt_type, "cmd.run");
    p.kwargs.insert("cmd".into(), Value::from(run.command));
    p.kwargs.insert("python_shell".into(), Value::from(true));
    if let Some(cwd) = run.cwd {
        p.kwargs.insert("cwd".into(), Value::from(cwd));
    }
    if let Some(user) = run.runas {
        p.kwargs.insert("runas".into(), Value::from(user));
    }
    if let Some(t) = run.timeout {
        p.kwargs.insert("timeout".into(), Value::from(t));
    }
    p.kwargs.insert("env".into(), env_map(run.env));
    p
}

/// `test.ping` to the same targets as `publish` (which of them answer).
pub fn ping_like(publish: &Publish) -> Publish {
    Publish::new(publish.tgt.clone(), &publish.tgt_type, "test.ping")
}

fn env_map(env: Vec<(String, String)>) -> Value {
    Value::Map(
        env.into_iter()
            .map(|(k, v)| (Value::from(k), Value::from(v)))
            .collect(),
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A keyword argument as text (for tests).
#[cfg(test)]
pub fn kwarg_text(p: &Publish, key: &str) -> Option<String> {
    p.kwargs.get(key).map(super::wire::value_text)
}

/// A map-valued keyword argument (`env`) as text pairs, in order (for tests).
#[cfg(test)]
pub fn kwarg_pairs(p: &Publish, key: &str) -> Vec<(String, String)> {
    match p.kwargs.get(key) {
        Some(Value::Map(m)) => m
            .iter()
            .map(|(k, v)| (super::wire::value_text(k), super::wire::value_text(v)))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrapper_path_is_quoted_for_the_shell() {
        let p = wrapper_launch(Tgt::Expr("*".into()), "glob", "/opt/it's/sp", vec![]);
        assert_eq!(
            kwarg_text(&p, "cmd").unwrap(),
            "SP_MACHINE_ID={{ grains['id'] | tojson }} exec '/opt/it'\\''s/sp'"
        );
        assert_eq!(kwarg_text(&p, "template").unwrap(), "jinja");
    }
}
