//! A job's launch as a Salt publish: the job's settings turned into the plain values
//! `salt::command` takes (the wrapper's `SP_*` environment, or a legacy job's `cmd.run`).

use crate::config::{Job, Settings, TargetType, Targets};
use crate::salt::command::{self, CmdRun};
use crate::salt::{Publish, Tgt};

/// `cmd.run_all` of the wrapper, with the job in the `SP_*` environment.
/// `peers`: the other live daemons' machines URLs (a shared store), after this one's in
/// `SP_WEBSOCKET_URL`, so the wrapper fails over to whichever daemon adopts the run.
pub fn wrapper(
    job: &Job,
    instance: &str,
    settings: &Settings,
    token: &str,
    peers: &[String],
) -> Publish {
    let mut urls = vec![settings.machines_ws_url(&job.saltpeter_server_host)];
    for peer in peers {
        if !urls.contains(peer) {
            urls.push(peer.clone());
        }
    }
    let mut env: Vec<(String, String)> = vec![
        ("SP_WEBSOCKET_URL".into(), urls.join(",")),
        ("SP_JOB_NAME".into(), job.name.clone()),
        ("SP_JOB_INSTANCE".into(), instance.into()),
        ("SP_JOB_INSTANCE_NAME".into(), instance.into()),
        ("SP_COMMAND".into(), job.command.clone()),
        (
            "SP_WRAPPER_LOGLEVEL".into(),
            job.wrapper_loglevel.as_str().into(),
        ),
        ("SP_WRAPPER_LOGDIR".into(), job.wrapper_logdir.clone()),
        ("SP_ALLOW_OVERLAP".into(), job.allow_overlap.to_string()),
        (
            "SP_TIMEOUT".into(),
            job.timeout_secs.unwrap_or(0).to_string(),
        ),
        ("SP_RUN_TOKEN".into(), token.into()),
    ];
    for (key, value) in [
        ("SP_CWD", &job.cwd),
        ("SP_USER", &job.user),
        ("SP_LOCKFILE", &job.lockfile),
    ] {
        if let Some(v) = value {
            env.push((key.into(), v.clone()));
        }
    }
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    command::wrapper_launch(
        salt_target(job),
        job.target_type.as_str(),
        &job.wrapper_path,
        env,
    )
}

/// Legacy mode (`use_wrapper: false`): Salt's `cmd.run` of the command itself.
pub fn legacy(job: &Job, instance: &str) -> Publish {
    let mut env: Vec<(String, String)> = vec![
        ("SP_JOB_NAME".into(), job.name.clone()),
        ("SP_JOB_INSTANCE_NAME".into(), instance.into()),
    ];
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let run = CmdRun {
        command: &job.command,
        cwd: job.cwd.as_deref(),
        runas: job.user.as_deref(),
        timeout: job.timeout_secs,
        env,
    };
    command::cmd_run(salt_target(job), job.target_type.as_str(), run)
}

/// The job's targets as Salt takes them (a `list` target as a list, also when written `a,b`).
pub fn salt_target(job: &Job) -> Tgt {
    match &job.targets {
        Targets::List(l) => Tgt::List(l.clone()),
        Targets::Expr(e) if job.target_type == TargetType::List => {
            Tgt::List(e.split(',').map(|s| s.trim().to_string()).collect())
        }
        Targets::Expr(e) => Tgt::Expr(e.clone()),
    }
}

/// Whether the job's wrappers may connect without a run token: only when the operator allowed
/// it (`allow_legacy_wrappers`) and only for a wrapper that is not sp-wrapper (which always
/// sends its token).
pub fn accepts_tokenless(job: &Job, settings: &Settings) -> bool {
    settings.allow_legacy_wrappers && job.runs_original_wrapper()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::salt::command::{kwarg_pairs, kwarg_text};

    fn job(yaml: &str) -> (Arc<Job>, Settings) {
        let config = crate::config::load_valid(yaml);
        (config.jobs["j"].clone(), config.settings)
    }

    const YAML: &str = "j:\n  min: 0\n  hour: 0\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: 'a, b'\n  target_type: list\n  user: www\n  cwd: /srv\n  command: \"echo 'it''s' \\\"q\\\" \\\\ done\"\n  env:\n    FOO: bar\n";

    #[test]
    fn the_wrapper_launch_carries_the_job_in_real_keyword_arguments() {
        let (job, settings) = job(YAML);
        let p = wrapper(&job, "j_1", &settings, "tok", &[]);
        assert_eq!(
            (p.fun.as_str(), p.tgt.clone()),
            ("cmd.run_all", Tgt::List(vec!["a".into(), "b".into()]))
        );
        assert_eq!(kwarg_text(&p, "template").unwrap(), "jinja");
        assert_eq!(
            kwarg_text(&p, "cmd").unwrap(),
            "SP_MACHINE_ID={{ grains['id'] | tojson }} exec '/usr/local/bin/sp_wrapper.py'"
        );
        let env: HashMap<String, String> = kwarg_pairs(&p, "env").into_iter().collect();
        assert_eq!(env["SP_COMMAND"], "echo 'it''s' \"q\" \\ done");
        assert_eq!(env["SP_WEBSOCKET_URL"], "ws://master1:8889");
        // With other daemons on the store: theirs follow, this daemon's first, none twice.
        let peers = ["ws://m2:8889".to_string(), "ws://master1:8889".to_string()];
        let p = wrapper(&job, "j_1", &settings, "tok", &peers);
        let env: HashMap<String, String> = kwarg_pairs(&p, "env").into_iter().collect();
        assert_eq!(env["SP_WEBSOCKET_URL"], "ws://master1:8889,ws://m2:8889");
        assert_eq!(
            (
                env["SP_JOB_INSTANCE"].as_str(),
                env["SP_RUN_TOKEN"].as_str()
            ),
            ("j_1", "tok")
        );
        assert_eq!(
            (
                env["SP_USER"].as_str(),
                env["SP_CWD"].as_str(),
                env["FOO"].as_str()
            ),
            ("www", "/srv", "bar")
        );
        assert_eq!(
            (env["SP_TIMEOUT"].as_str(), env["SP_ALLOW_OVERLAP"].as_str()),
            ("3600", "false")
        );
    }

    #[test]
    fn the_legacy_launch_is_salts_cmd_run() {
        let (job, _) = job(YAML);
        let p = legacy(&job, "j_1");
        assert_eq!(p.fun, "cmd.run");
        assert_eq!(kwarg_text(&p, "cmd").unwrap(), "echo 'it''s' \"q\" \\ done");
        assert_eq!(
            (kwarg_text(&p, "runas"), kwarg_text(&p, "cwd")),
            (Some("www".into()), Some("/srv".into()))
        );
        assert_eq!(kwarg_text(&p, "timeout").unwrap(), "3600");
    }
}
