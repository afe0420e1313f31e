//! Run lifecycle tests with virtual time: every `now` is given, nothing sleeps.

use super::*;

const S: Duration = Duration::from_secs(1);

fn spec(timeout: Option<u64>) -> RunSpec {
    RunSpec {
        job: "backup".into(),
        instance: "backup_1".into(),
        timeout: timeout.map(Duration::from_secs),
        heartbeat_timeout: 15 * S,
        timeout_grace: 30 * S,
        success_threshold: None,
        legacy: false,
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// All actions so far.
fn drain(run: &mut Run) -> Vec<Action> {
    std::iter::from_fn(|| run.poll_action()).collect()
}

fn ended(actions: &[Action]) -> Vec<(String, i64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::TargetEnded {
                machine, result, ..
            } => Some((machine.clone(), result.code)),
            _ => None,
        })
        .collect()
}

fn logs(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| {
            if let Action::Log(l) = a {
                Some(l.clone())
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn happy_path_two_phases_and_the_originals_log_lines() {
    let mut run = Run::new(spec(Some(3600)));
    run.handle_published("2026", &names(&["a", "b"]), &[], Duration::ZERO);
    run.handle_salt_return("a", 0, "Wrapper started successfully", S);
    run.handle_salt_return("b", 0, "Wrapper started successfully", 2 * S);
    run.handle_wrapper(
        "a",
        WrapperEvent::Started {
            pid: 7,
            version: "v".into(),
        },
        2 * S,
    );
    run.handle_wrapper("a", WrapperEvent::Output { ends_line: true }, 3 * S);
    run.handle_wrapper("a", WrapperEvent::Completed { retcode: 0 }, 4 * S);
    run.handle_wrapper("b", WrapperEvent::Completed { retcode: 0 }, 5 * S);
    assert!(run.is_done());
    let actions = drain(&mut run);
    assert_eq!(
        logs(&actions),
        [
            "Waiting for Salt to confirm wrapper execution for job 2026...",
            "Salt confirmed wrapper started on a",
            "Salt confirmed wrapper started on b",
            "Monitoring WebSocket results for 2 confirmed target(s)...",
            "Result for backup_1:a: exit code 0 (success)",
            "Result for backup_1:b: exit code 0 (success)",
            "WebSocket: All targets completed for backup, exiting monitor loop",
            "Completed: 2/2 targets successful",
        ]
    );
    assert!(actions.contains(&Action::ConfirmComplete {
        machine: "a".into()
    }));
    let confirmed: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            Action::TargetConfirmed { machine } => Some(machine.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(confirmed, ["a", "b"]);
    let out = actions.iter().find_map(|a| match a {
        Action::TargetEnded {
            machine,
            text,
            result,
        } if machine == "a" => Some((text.clone(), result.confirmed_at)),
        _ => None,
    });
    // The output itself went to the journal; nothing is left to add at the end.
    assert_eq!(out, Some((String::new(), Some(S))));
    assert_eq!(
        actions.last(),
        Some(&Action::RunEnded(RunOutcome {
            success: true,
            succeeded: 2,
            total: 2
        }))
    );
}

#[test]
fn a_salt_failure_ends_the_target_at_once_with_salts_text() {
    let mut run = Run::new(spec(None));
    run.handle_published("j", &names(&["a", "b"]), &[], Duration::ZERO);
    run.handle_salt_return("a", 127, "/bin/sh: 1: /opt/sp-wrapper: not found", S);
    let actions = drain(&mut run);
    assert_eq!(ended(&actions), [("a".to_string(), 127)]);
    assert!(
        logs(&actions).contains(
            &"Wrapper execution failed on a (retcode=127): /bin/sh: 1: /opt/sp-wrapper: not found"
                .to_string()
        )
    );
    assert!(!run.is_done());
    run.handle_salt_return("b", 126, "Permission denied", 2 * S);
    let actions = drain(&mut run);
    assert_eq!(
        actions.last(),
        Some(&Action::RunEnded(RunOutcome {
            success: false,
            succeeded: 0,
            total: 2
        }))
    );
}

#[test]
fn phase_one_never_times_out() {
    let mut run = Run::new(spec(Some(3)));
    run.handle_published("j", &names(&["slow"]), &[], Duration::ZERO);
    assert_eq!(run.poll_timeout(), None);
    run.handle_timeout(Duration::from_secs(86_400));
    assert!(!run.is_done());
    assert_eq!(run.unconfirmed(), ["slow"]);
    // Confirmed a day later: the timeout counts from there.
    run.handle_salt_return("slow", 0, "", Duration::from_secs(86_400));
    assert_eq!(run.poll_timeout(), Some(Duration::from_secs(86_400 + 15)));
}

#[test]
fn no_heartbeat_for_15_seconds_gives_253() {
    let mut run = Run::new(spec(None));
    run.handle_published("j", &names(&["a"]), &[], Duration::ZERO);
    run.handle_salt_return("a", 0, "", Duration::ZERO);
    run.handle_wrapper("a", WrapperEvent::Heartbeat, 5 * S);
    run.handle_wrapper("a", WrapperEvent::Heartbeat, 10 * S);
    assert_eq!(run.poll_timeout(), Some(25 * S));
    run.handle_timeout(24 * S);
    assert!(!run.is_done(), "a spurious early timeout does nothing");
    run.handle_timeout(25 * S);
    let actions = drain(&mut run);
    assert_eq!(ended(&actions), [("a".to_string(), 253)]);
    let output = actions.iter().find_map(|a| {
        if let Action::TargetEnded { text, .. } = a {
            Some(text.clone())
        } else {
            None
        }
    });
    assert_eq!(
        output.unwrap(),
        "[SALTPETER ERROR: Job lost connection - no heartbeat for 15 seconds]\n"
    );
}

#[test]
fn the_daemon_enforces_the_timeout_from_confirmation_plus_grace() {
    let mut run = Run::new(spec(Some(3)));
    run.handle_published("j", &names(&["a"]), &[], Duration::ZERO);
    run.handle_salt_return("a", 0, "", 10 * S);
    // Heartbeats keep coming, but the wrapper never ends the job.
    for t in (15..=45).step_by(5) {
        run.handle_wrapper("a", WrapperEvent::Heartbeat, t * S);
    }
    assert_eq!(run.poll_timeout(), Some(43 * S));
    run.handle_timeout(43 * S);
    let actions = drain(&mut run);
    assert!(actions.contains(&Action::SendKill {
        machine: "a".into()
    }));
    assert_eq!(ended(&actions), [("a".to_string(), 124)]);
}

#[test]
fn the_wrappers_start_confirms_even_when_salt_is_late() {
    let mut run = Run::new(spec(None));
    // Returns and wrappers may come before the publish reply.
    run.handle_wrapper(
        "a",
        WrapperEvent::Started {
            pid: 1,
            version: "v".into(),
        },
        S,
    );
    run.handle_published("j", &names(&["a"]), &[], 2 * S);
    run.handle_salt_return("a", 0, "", 3 * S);
    run.handle_wrapper("a", WrapperEvent::Completed { retcode: 3 }, 4 * S);
    let actions = drain(&mut run);
    let confirmations = logs(&actions)
        .iter()
        .filter(|l| l.starts_with("Salt confirmed"))
        .count();
    assert_eq!(
        confirmations, 1,
        "the late return changes nothing but is reported"
    );
    assert_eq!(ended(&actions), [("a".to_string(), 3)]);
    let confirmed = actions.iter().find_map(|a| {
        if let Action::TargetEnded { result, .. } = a {
            result.confirmed_at
        } else {
            None
        }
    });
    assert_eq!(confirmed, Some(S));
}

#[test]
fn missing_and_down_targets_get_255_without_holding_the_others() {
    let mut run = Run::new(spec(None));
    run.handle_published(
        "j",
        &names(&["a", "down"]),
        &names(&["nokey"]),
        Duration::ZERO,
    );
    run.handle_salt_return("a", 0, "", S);
    run.handle_wrapper("a", WrapperEvent::Completed { retcode: 0 }, 2 * S);
    run.handle_target_down("down", None, 12 * S);
    let actions = drain(&mut run);
    assert_eq!(
        ended(&actions),
        [
            ("nokey".to_string(), 255),
            ("a".to_string(), 0),
            ("down".to_string(), 255)
        ]
    );
    assert!(run.is_done());
}

#[test]
fn kills_reach_confirmed_targets_now_and_others_when_they_confirm() {
    let mut run = Run::new(spec(None));
    run.handle_published("j", &names(&["a", "b"]), &[], Duration::ZERO);
    run.handle_salt_return("a", 0, "", S);
    run.handle_kill(None, 2 * S);
    let actions = drain(&mut run);
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::SendKill { .. }))
            .count(),
        1
    );
    run.handle_salt_return("b", 0, "", 3 * S);
    assert!(drain(&mut run).contains(&Action::SendKill {
        machine: "b".into()
    }));
    run.handle_wrapper("a", WrapperEvent::Completed { retcode: 143 }, 4 * S);
    run.handle_wrapper("b", WrapperEvent::Completed { retcode: 143 }, 5 * S);
    let actions = drain(&mut run);
    assert_eq!(
        ended(&actions),
        [("a".to_string(), 143), ("b".to_string(), 143)]
    );
}

#[test]
fn a_run_killed_before_salt_answers_kills_each_target_as_it_confirms() {
    let mut run = Run::new(spec(None));
    run.handle_kill(None, Duration::ZERO);
    assert!(!run.is_done(), "the publish is still out");
    run.handle_published("j", &names(&["a"]), &[], S);
    assert!(
        !drain(&mut run)
            .iter()
            .any(|a| matches!(a, Action::SendKill { .. }))
    );
    run.handle_salt_return("a", 0, "", 2 * S);
    assert!(drain(&mut run).contains(&Action::SendKill {
        machine: "a".into()
    }));
    run.handle_wrapper("a", WrapperEvent::Completed { retcode: 143 }, 3 * S);
    assert_eq!(ended(&drain(&mut run)), [("a".to_string(), 143)]);
    assert!(run.is_done());
}

#[test]
fn success_threshold_and_empty_runs() {
    let mut s = spec(None);
    s.success_threshold = Some(0.5);
    let mut run = Run::new(s);
    run.handle_published("j", &names(&["a", "b"]), &[], Duration::ZERO);
    run.handle_salt_return("a", 127, "x", S);
    run.handle_salt_return("b", 0, "", S);
    run.handle_wrapper("b", WrapperEvent::Completed { retcode: 0 }, 2 * S);
    assert_eq!(
        drain(&mut run).last(),
        Some(&Action::RunEnded(RunOutcome {
            success: true,
            succeeded: 1,
            total: 2
        }))
    );
    let mut run = Run::new(spec(None));
    run.handle_published("j", &[], &[], Duration::ZERO);
    assert_eq!(
        drain(&mut run).last(),
        Some(&Action::RunEnded(RunOutcome {
            success: false,
            succeeded: 0,
            total: 0
        }))
    );
}

#[test]
fn legacy_mode_takes_salts_return_as_the_result_and_kills_through_salt() {
    let mut s = spec(Some(3));
    s.legacy = true;
    let mut run = Run::new(s);
    run.handle_published("j", &names(&["a", "b", "c"]), &[], Duration::ZERO);
    run.handle_salt_return("a", 0, "legacy output", S);
    run.handle_salt_return("b", 2, "it failed", S);
    // No Phase 2: no heartbeats expected, no daemon-side timeout.
    assert_eq!(run.poll_timeout(), None);
    run.handle_kill(None, 2 * S);
    let actions = drain(&mut run);
    assert!(actions.contains(&Action::TermJob {
        machines: names(&["c"])
    }));
    assert!(!actions.iter().any(|a| matches!(a, Action::SendKill { .. })));
    run.handle_target_down("c", None, 20 * S);
    let actions = [actions, drain(&mut run)].concat();
    assert_eq!(
        ended(&actions),
        [
            ("a".to_string(), 0),
            ("b".to_string(), 2),
            ("c".to_string(), 143)
        ]
    );
    let out = actions.iter().find_map(|a| match a {
        Action::TargetEnded { machine, text, .. } if machine == "a" => Some(text.clone()),
        _ => None,
    });
    assert_eq!(out.unwrap(), "legacy output");
    assert!(
        !logs(&actions).iter().any(|l| l.contains("rapper")),
        "no wrapper talk in legacy mode"
    );
}

#[test]
fn batches_run_one_after_the_other_and_a_kill_stops_the_rest() {
    let mut run = Run::new(spec(None));
    run.handle_resolved(&names(&["down"]), 3, Duration::ZERO);
    run.handle_published("j1", &names(&["a"]), &[], S);
    run.handle_salt_return("a", 0, "", S);
    run.handle_wrapper("a", WrapperEvent::Completed { retcode: 0 }, 2 * S);
    let actions = drain(&mut run);
    assert_eq!(
        ended(&actions),
        [("down".to_string(), 255), ("a".to_string(), 0)]
    );
    assert_eq!(actions.last(), Some(&Action::NextBatch));
    assert!(!run.is_done());
    run.handle_published("j2", &names(&["b"]), &[], 3 * S);
    run.handle_salt_return("b", 0, "", 3 * S);
    run.handle_kill(None, 4 * S);
    run.handle_wrapper("b", WrapperEvent::Completed { retcode: 143 }, 5 * S);
    let actions = drain(&mut run);
    assert!(
        !actions.contains(&Action::NextBatch),
        "a kill stops the remaining batches"
    );
    assert_eq!(
        actions.last(),
        Some(&Action::RunEnded(RunOutcome {
            success: false,
            succeeded: 1,
            total: 3
        }))
    );
}

#[test]
fn results_recorded_before_a_restart_count_toward_the_outcome() {
    let mut run = Run::new(spec(None));
    run.handle_recovered("a", 127);
    run.handle_published("j", &names(&["b"]), &[], Duration::ZERO);
    run.handle_wrapper("b", WrapperEvent::Heartbeat, S);
    run.handle_wrapper("b", WrapperEvent::Completed { retcode: 0 }, 2 * S);
    let actions = drain(&mut run);
    // Only `b` is reported now; `a` was recorded before the restart.
    assert_eq!(ended(&actions), [("b".to_string(), 0)]);
    assert_eq!(
        actions.last(),
        Some(&Action::RunEnded(RunOutcome {
            success: false,
            succeeded: 1,
            total: 2
        }))
    );
}

#[test]
fn a_note_after_output_that_did_not_end_a_line_starts_a_line_of_its_own() {
    let mut run = Run::new(spec(None));
    run.handle_published("j", &names(&["a", "b"]), &[], Duration::ZERO);
    run.handle_wrapper("a", WrapperEvent::Output { ends_line: false }, S);
    run.handle_wrapper("b", WrapperEvent::Output { ends_line: true }, S);
    run.handle_timeout(16 * S);
    let texts: Vec<String> = drain(&mut run)
        .into_iter()
        .filter_map(|a| match a {
            Action::TargetEnded { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    let note = "[SALTPETER ERROR: Job lost connection - no heartbeat for 15 seconds]\n";
    assert_eq!(texts, [format!("\n{note}"), note.to_string()]);
}

#[test]
fn salts_late_confirmation_is_logged_even_after_the_target_ended() {
    let mut run = Run::new(spec(None));
    run.handle_published("j", &names(&["a", "b", "c"]), &[], Duration::ZERO);
    for m in ["a", "b", "c"] {
        run.handle_wrapper(m, WrapperEvent::Heartbeat, S);
    }
    run.handle_wrapper("a", WrapperEvent::Completed { retcode: 0 }, 2 * S);
    run.handle_wrapper("b", WrapperEvent::Completed { retcode: 0 }, 2 * S);
    run.handle_salt_return("a", 0, "", 3 * S);
    run.handle_salt_return("a", 0, "", 3 * S);
    let lines = logs(&drain(&mut run));
    assert!(lines.contains(&"Monitoring WebSocket results for 3 confirmed target(s)...".into()));
    let confirmations: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("Salt confirmed"))
        .collect();
    assert_eq!(
        confirmations,
        ["Salt confirmed wrapper started on a (the wrapper had confirmed first)"]
    );
}

#[test]
fn a_heartbeat_is_judged_by_when_it_arrived() {
    let mut run = Run::new(spec(None));
    run.handle_published("j", &names(&["a"]), &[], Duration::ZERO);
    run.handle_salt_return("a", 0, "", Duration::ZERO);
    // Received at 14 s, handed to the engine only after a backlog: the deadline is 29 s.
    run.handle_wrapper("a", WrapperEvent::Heartbeat, 14 * S);
    assert_eq!(run.poll_timeout(), Some(29 * S));
    // A stamp older than the last one (another source's clock) never moves the deadline back.
    run.handle_wrapper("a", WrapperEvent::Heartbeat, 13 * S);
    assert_eq!(run.poll_timeout(), Some(29 * S));
    run.handle_timeout(28 * S);
    assert!(
        drain(&mut run)
            .iter()
            .all(|a| !matches!(a, Action::TargetEnded { .. }))
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// How one target ends.
    #[derive(Clone, Copy, Debug)]
    enum End {
        Complete(i64),
        SaltFails,
        Down,
        Silent,
    }

    fn end() -> impl Strategy<Value = End> {
        prop_oneof![
            (0i64..3).prop_map(End::Complete),
            Just(End::SaltFails),
            Just(End::Down),
            Just(End::Silent),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The run ends after exactly its last target, whatever the order and the size.
        #[test]
        fn the_run_ends_after_exactly_the_last_target(
            ends in proptest::collection::vec(end(), 1..5_000),
            seed in any::<u64>(),
        ) {
            let n = ends.len();
            let machines: Vec<String> = (0..n).map(|i| format!("m{i:05}")).collect();
            let mut run = Run::new(spec(None));
            run.handle_published("j", &machines, &[], Duration::ZERO);
            // Silent targets are confirmed and then lose their heartbeat at 15 s.
            for (m, e) in machines.iter().zip(&ends) {
                if matches!(e, End::Silent) {
                    run.handle_salt_return(m, 0, "", Duration::ZERO);
                }
            }
            // A permutation from the seed (an LCG: deterministic per case).
            let mut order: Vec<usize> = (0..n).collect();
            let mut x = seed | 1;
            for i in (1..n).rev() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (x >> 33) as usize % (i + 1));
            }
            let silent = ends.iter().filter(|e| matches!(e, End::Silent)).count();
            let mut finished = 0;
            for (k, &i) in order.iter().filter(|i| !matches!(ends[**i], End::Silent)).enumerate() {
                let m = &machines[i];
                let now = S + Duration::from_millis(k as u64);
                match ends[i] {
                    End::Complete(code) => run.handle_wrapper(m, WrapperEvent::Completed { retcode: code }, now),
                    End::SaltFails => run.handle_salt_return(m, 127, "not found", now),
                    End::Down => run.handle_target_down(m, None, now),
                    End::Silent => unreachable!(),
                }
                finished += 1;
                let ran_out = finished == n - silent && silent == 0;
                prop_assert_eq!(run.is_done(), ran_out, "after {} of {} targets", finished, n);
            }
            if silent > 0 {
                prop_assert!(!run.is_done());
                run.handle_timeout(15 * S);
                prop_assert!(run.is_done());
            }
            let actions = drain(&mut run);
            let ended_runs = actions.iter().filter(|a| matches!(a, Action::RunEnded(_))).count();
            prop_assert_eq!(ended_runs, 1);
            prop_assert_eq!(ended(&actions).len(), n);
            let ok = ends.iter().filter(|e| matches!(e, End::Complete(0))).count();
            prop_assert_eq!(actions.last(), Some(&Action::RunEnded(RunOutcome {
                success: ok == n,
                succeeded: ok,
                total: n,
            })));
        }
    }
}

fn notes(actions: &[Action]) -> Vec<(String, i64, Option<String>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::TargetEnded {
                machine, result, ..
            } => Some((machine.clone(), result.code, result.note.clone())),
            _ => None,
        })
        .collect()
}

/// A kill ends every target within KILL_WAIT, confirmed or not, and says which it was.
#[test]
fn a_kill_ends_every_target_within_the_kill_wait_whatever_salt_and_the_wrapper_do() {
    let mut run = Run::new(spec(None));
    run.handle_published(
        "j",
        &names(&["up", "silent", "prompt"]),
        &[],
        Duration::ZERO,
    );
    run.handle_salt_return("up", 0, "", S);
    run.handle_salt_return("prompt", 0, "", S);
    // Heartbeats keep the confirmed ones alive; "silent" never gets past Phase 1.
    run.handle_kill(None, 2 * S);
    assert_eq!(run.poll_timeout(), Some(2 * S + KILL_WAIT));
    run.handle_wrapper("up", WrapperEvent::Heartbeat, 5 * S);
    run.handle_wrapper("prompt", WrapperEvent::Completed { retcode: 143 }, 6 * S);
    run.handle_timeout(2 * S + KILL_WAIT - Duration::from_millis(1));
    assert!(!run.is_done(), "not before the kill wait");
    run.handle_wrapper("up", WrapperEvent::Heartbeat, 10 * S);
    run.handle_timeout(2 * S + KILL_WAIT);
    assert!(run.is_done());
    let ended = notes(&drain(&mut run));
    assert_eq!(
        ended,
        [
            ("prompt".to_string(), 143, None),
            (
                "up".to_string(),
                143,
                Some(
                    "[Job terminated by user request - no result from the wrapper within 10 seconds]"
                        .into()
                )
            ),
            (
                "silent".to_string(),
                143,
                Some("[Job killed before it started: Salt had not confirmed the wrapper]".into())
            ),
        ]
    );
    assert_eq!(run.poll_timeout(), None, "no deadline outlives its target");
}

/// Targets Salt names after a whole-run kill get their own kill wait.
#[test]
fn a_run_killed_before_the_publish_reply_ends_its_targets_too() {
    let mut run = Run::new(spec(None));
    run.handle_kill(None, Duration::ZERO);
    run.handle_published("j", &names(&["a"]), &[], 3 * S);
    assert_eq!(run.poll_timeout(), Some(3 * S + KILL_WAIT));
    run.handle_timeout(3 * S + KILL_WAIT);
    assert_eq!(ended(&drain(&mut run)), [("a".to_string(), 143)]);
    assert!(run.is_done());
}

/// The original wrapper reports a signal as -N; the contract's codes are recorded, the raw
/// value kept in the note.
#[test]
fn the_original_wrappers_negative_codes_are_normalised() {
    let mut run = Run::new(spec(Some(60)));
    run.handle_published(
        "j",
        &names(&["killed", "timed-out", "signalled", "ok"]),
        &[],
        Duration::ZERO,
    );
    for m in ["killed", "timed-out", "signalled", "ok"] {
        run.handle_salt_return(m, 0, "", S);
    }
    run.handle_kill(Some("killed"), 2 * S);
    run.handle_wrapper("killed", WrapperEvent::Completed { retcode: -15 }, 3 * S);
    run.handle_wrapper("signalled", WrapperEvent::Completed { retcode: -9 }, 20 * S);
    run.handle_wrapper("ok", WrapperEvent::Completed { retcode: 3 }, 20 * S);
    // Within a few seconds of the job's timeout (the wrapper's clock starts a little earlier).
    run.handle_wrapper("timed-out", WrapperEvent::Heartbeat, 50 * S);
    run.handle_wrapper(
        "timed-out",
        WrapperEvent::Completed { retcode: -15 },
        58 * S,
    );
    let ended = notes(&drain(&mut run));
    let codes: Vec<(&str, i64)> = ended.iter().map(|(m, c, _)| (m.as_str(), *c)).collect();
    assert_eq!(
        codes,
        [
            ("killed", 143),
            ("signalled", 137),
            ("ok", 3),
            ("timed-out", 124)
        ]
    );
    assert_eq!(
        ended[0].2.as_deref(),
        Some(
            "[saltpeter: the wrapper reported exit code -15 (the command was killed by signal 15); recorded as 143: killed by user request]"
        )
    );
    assert!(ended[1].2.as_deref().unwrap().contains("-9"));
    assert_eq!(ended[2].2, None, "a job's own code is left alone");
    assert!(ended[3].2.as_deref().unwrap().contains("124: job timeout"));
}
