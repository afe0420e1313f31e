//! The coordinator's decisions with virtual time: every `now` is given, nothing sleeps, no
//! socket is opened. Salt and the hub are the effects the core asks for and the inputs a test
//! feeds back.

use super::*;
use crate::agents::{HubCommand, HubEvent, HubEventKind};
use crate::salt::Event;

const S: Duration = Duration::from_secs(1);

struct NoShuffle;

impl Shuffle for NoShuffle {
    fn shuffle(&mut self, _: &mut [String]) {}
}

/// A core, its virtual clock and the effects it asked for.
struct Harness {
    core: Core,
    t: Mono,
    jobs: HashMap<String, Arc<Job>>,
    settings: Settings,
    effects: Vec<Effect>,
}

fn job_yaml(name: &str, targets: &str, extra: &str) -> String {
    format!(
        "{name}:\n  min: 0\n  hour: 0\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: '{targets}'\n  target_type: list\n  command: 'true'\n{extra}"
    )
}

impl Harness {
    fn new(yaml: &str) -> Harness {
        let config = crate::config::load_valid(yaml);
        Harness {
            core: Core::default(),
            t: Duration::ZERO,
            jobs: config.jobs.into_iter().collect(),
            settings: config.settings,
            effects: Vec::new(),
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: self.t,
            wall: Timestamp::from_second(1_800_000_000).unwrap() + self.t,
        }
    }

    fn collect(&mut self) -> &[Effect] {
        let start = self.effects.len();
        while let Some(e) = self.core.poll_effect() {
            self.effects.push(e);
        }
        &self.effects[start..]
    }

    fn fire(&mut self, job: &str, instance: &str) {
        let now = self.now();
        let job = self.jobs[job].clone();
        let settings = self.settings.clone();
        let firing = Firing {
            job: &job,
            instance,
            settings: &settings,
            maintenance: &[],
            trigger: Trigger::Manual,
            scheduled: None,
        };
        self.core.fire(firing, "token".into(), now);
        self.collect();
    }

    /// The last publish of `purpose` for `instance`: its jid and target.
    fn published(&self, instance: &str, purpose: &Purpose) -> (String, Tgt) {
        self.effects
            .iter()
            .rev()
            .find_map(|e| match e {
                Effect::Publish {
                    instance: i,
                    purpose: p,
                    publish,
                    ..
                } if i == instance && p == purpose => {
                    Some((publish.jid.clone(), publish.tgt.clone()))
                }
                _ => None,
            })
            .expect("published")
    }

    fn publish_reply(&mut self, instance: &str, purpose: Purpose, jid: &str, minions: &[&str]) {
        let now = self.now();
        let published = Published {
            jid: jid.into(),
            minions: minions.iter().map(|m| m.to_string()).collect(),
            missing: Vec::new(),
        };
        self.core
            .handle_salt_reply(instance, purpose, Ok(published), &mut NoShuffle, now);
        self.collect();
    }

    /// The reply to a probe of `minion`: delivered elsewhere, here its failure or refusal.
    fn probe_reply(&mut self, minion: &str, result: Result<Published, PublishError>) {
        let now = self.now();
        let purpose = Purpose::Probe(vec![minion.into()]);
        self.core
            .handle_salt_reply("j_1", purpose, result, &mut NoShuffle, now);
        self.collect();
    }

    /// Job `j` on `targets`, fired as `j_1` and published to `minions`: its launch jid.
    fn launched(targets: &str, minions: &[&str]) -> (Harness, String) {
        let mut h = Harness::new(&job_yaml("j", targets, ""));
        h.fire("j", "j_1");
        let (jid, _) = h.published("j_1", &Purpose::Launch);
        h.publish_reply("j_1", Purpose::Launch, &jid, minions);
        (h, jid)
    }

    /// `j_1` of a job on the one target `a`, launched and confirmed by Salt (its heartbeat
    /// clock started).
    fn confirmed(target: &str) -> Harness {
        let (mut h, jid) = Harness::launched(target, &[target]);
        h.bus(Event::job_return(
            &jid,
            target,
            "cmd.run_all",
            0,
            Some(""),
            false,
        ));
        h
    }

    /// What `f` picks out of the effects so far, in order.
    fn pick<T>(&self, f: impl FnMut(&Effect) -> Option<T>) -> Vec<T> {
        self.effects.iter().filter_map(f).collect()
    }

    fn bus(&mut self, event: Event) {
        let now = self.now();
        self.core
            .handle_bus(BusMessage::Event(event), &mut NoShuffle, now);
        self.collect();
    }

    fn hub(&mut self, instance: &str, machine: &str, kind: HubEventKind, received: Mono) {
        let event = HubEvent {
            instance: instance.into(),
            machine: machine.into(),
            at: tokio::time::Instant::now(),
            kind,
            held: Default::default(),
        };
        let now = Now {
            mono: received,
            ..self.now()
        };
        self.core.handle_hub(event, now);
        self.collect();
    }

    fn advance_to(&mut self, t: Mono) {
        self.t = t;
        let now = self.now();
        self.core.handle_timeout(&mut NoShuffle, now);
        self.collect();
    }

    fn results(&self) -> Vec<(String, String, i64)> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Record(RunEvent::TargetEnded {
                    instance,
                    machine,
                    code,
                    ..
                }) => Some((instance.clone(), machine.clone(), *code)),
                _ => None,
            })
            .collect()
    }

    fn ended(&self, instance: &str) -> bool {
        self.effects.iter().any(|e| {
            matches!(e, Effect::Record(RunEvent::RunEnded { instance: i, .. }) if i == instance)
        })
    }
}

#[test]
fn a_run_is_registered_before_it_is_published_and_ends_after_its_last_target() {
    let mut h = Harness::new(&job_yaml("j", "a,b", ""));
    h.fire("j", "j_1");
    let register = h
        .effects
        .iter()
        .position(|e| matches!(e, Effect::Hub(HubCommand::Register { .. })));
    let publish = h
        .effects
        .iter()
        .position(|e| matches!(e, Effect::Publish { .. }));
    assert!(register < publish, "wrappers can beat the publish reply");
    let (jid, _) = h.published("j_1", &Purpose::Launch);
    h.publish_reply("j_1", Purpose::Launch, &jid, &["a", "b"]);
    h.bus(Event::job_return(
        &jid,
        "a",
        "cmd.run_all",
        0,
        Some(""),
        false,
    ));
    h.hub("j_1", "b", HubEventKind::Heartbeat, S);
    h.hub("j_1", "a", HubEventKind::Completed { retcode: 0 }, 2 * S);
    assert!(!h.ended("j_1"));
    h.hub("j_1", "b", HubEventKind::Completed { retcode: 3 }, 2 * S);
    assert!(h.ended("j_1"));
    assert_eq!(h.core.runs(), 0, "the run's state is gone");
    // Each result is acknowledged only after it is committed, then the run is unregistered.
    let after: Vec<&HubCommand> = h
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::HubAfterCommit(c) => Some(c),
            _ => None,
        })
        .collect();
    assert!(matches!(after.last(), Some(HubCommand::Unregister { .. })));
    assert_eq!(after.len(), 3);
}

#[test]
fn output_goes_to_the_journal_only_and_a_note_follows_it() {
    let mut h = Harness::new(&job_yaml("j", "a", ""));
    h.fire("j", "j_1");
    let (jid, _) = h.published("j_1", &Purpose::Launch);
    h.publish_reply("j_1", Purpose::Launch, &jid, &["a"]);
    let big = "x".repeat(1 << 20);
    for seq in 0..8 {
        h.hub(
            "j_1",
            "a",
            HubEventKind::Output {
                data: big.clone(),
                seq,
            },
            S,
        );
    }
    h.advance_to(16 * S);
    let outputs: Vec<usize> = h
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Record(RunEvent::Output { data, .. }) => Some(data.len()),
            _ => None,
        })
        .collect();
    // Eight megabytes passed through once each; the note is a line of its own after them.
    assert_eq!(outputs.len(), 9);
    let note = h.effects.iter().find_map(|e| match e {
        Effect::Record(RunEvent::Output {
            data, seq: None, ..
        }) => Some(data.clone()),
        _ => None,
    });
    assert!(
        note.unwrap()
            .starts_with("\n[SALTPETER ERROR: Job lost connection")
    );
    assert_eq!(h.results(), [("j_1".into(), "a".into(), 253)]);
}

#[test]
fn a_heartbeat_queued_behind_a_burst_is_judged_by_its_arrival() {
    let mut h = Harness::confirmed("a");
    // The loop is busy until 16 s; the heartbeat had arrived at 14 s and is handled first.
    h.t = 16 * S;
    h.hub("j_1", "a", HubEventKind::Heartbeat, 14 * S);
    h.advance_to(16 * S);
    assert!(h.results().is_empty(), "not lost: it arrived in time");
    assert_eq!(h.core.next_deadline(), Some(29 * S));
    h.advance_to(29 * S);
    assert_eq!(h.results(), [("j_1".into(), "a".into(), 253)]);
}

#[test]
fn one_heap_of_deadlines_visits_only_the_runs_that_are_due() {
    let mut yaml = String::new();
    for i in 0..200 {
        yaml.push_str(&job_yaml(&format!("j{i}"), "a", ""));
    }
    let mut h = Harness::new(&yaml);
    for i in 0..200 {
        let instance = format!("j{i}_1");
        h.fire(&format!("j{i}"), &instance);
        let (jid, _) = h.published(&instance, &Purpose::Launch);
        h.publish_reply(&instance, Purpose::Launch, &jid, &["a"]);
        // Confirmed one second apart: each run's heartbeat deadline is its own.
        h.hub(&instance, "a", HubEventKind::Heartbeat, i * S);
    }
    // The gathering's first deadline (10 s) was armed before the wrappers settled it: an
    // early wake-up that does nothing and re-arms at the runs' own deadlines.
    assert_eq!(h.core.next_deadline(), Some(10 * S));
    h.advance_to(10 * S);
    assert!(h.results().is_empty());
    assert_eq!(h.core.next_deadline(), Some(15 * S));
    h.advance_to(15 * S);
    assert_eq!(h.results(), [("j0_1".into(), "a".into(), 253)]);
    assert_eq!(h.core.next_deadline(), Some(16 * S));
    h.advance_to(20 * S);
    assert_eq!(h.results().len(), 6);
    assert_eq!(h.core.runs(), 194);
}

#[test]
fn batches_follow_each_other_after_a_ping_resolves_the_targets() {
    let mut h = Harness::new(&job_yaml("j", "a,b,c,d", "  batch_size: 2\n"));
    h.fire("j", "j_1");
    let (ping, _) = h.published("j_1", &Purpose::Resolve);
    h.publish_reply("j_1", Purpose::Resolve, &ping, &["a", "b", "c", "d"]);
    for m in ["a", "b", "c"] {
        h.bus(Event::job_return(&ping, m, "test.ping", 0, None, false));
    }
    let launches = |h: &Harness| {
        h.effects
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::Publish {
                        purpose: Purpose::Launch,
                        ..
                    }
                )
            })
            .count()
    };
    assert_eq!(
        launches(&h),
        0,
        "waits for every pinged target (or the resolve deadline)"
    );
    // `d` never answers: after the wait it is down, and the first batch is published.
    h.advance_to(10 * S);
    let (jid, tgt) = h.published("j_1", &Purpose::Launch);
    assert_eq!(tgt, Tgt::List(vec!["a".into(), "b".into()]));
    h.publish_reply("j_1", Purpose::Launch, &jid, &["a", "b"]);
    h.hub("j_1", "a", HubEventKind::Completed { retcode: 0 }, 11 * S);
    assert_eq!(launches(&h), 1, "the next batch waits for this one");
    h.hub("j_1", "b", HubEventKind::Completed { retcode: 0 }, 11 * S);
    let (jid, tgt) = h.published("j_1", &Purpose::Launch);
    assert_eq!(tgt, Tgt::List(vec!["c".into()]));
    h.publish_reply("j_1", Purpose::Launch, &jid, &["c"]);
    assert!(!h.ended("j_1"));
    h.hub("j_1", "c", HubEventKind::Completed { retcode: 0 }, 12 * S);
    assert!(h.ended("j_1"));
    assert_eq!(
        h.results(),
        [
            ("j_1".into(), "d".into(), 255),
            ("j_1".into(), "a".into(), 0),
            ("j_1".into(), "b".into(), 0),
            ("j_1".into(), "c".into(), 0)
        ]
    );
}

#[test]
fn a_silent_minion_is_probed_checked_in_the_cache_then_given_up() {
    let mut h = Harness::new(&job_yaml("j", "a,b", ""));
    h.fire("j", "j_1");
    let (jid, _) = h.published("j_1", &Purpose::Launch);
    h.publish_reply("j_1", Purpose::Launch, &jid, &["a", "b"]);
    // `b`'s wrapper confirms it before Salt does: only `a` needs a probe.
    h.hub("j_1", "b", HubEventKind::Heartbeat, S);
    h.hub("j_1", "b", HubEventKind::Completed { retcode: 0 }, 2 * S);
    h.advance_to(10 * S);
    let (probe, tgt) = h.published("j_1", &Purpose::Probe(vec!["a".into()]));
    assert_eq!(tgt, Tgt::List(vec!["a".into()]));
    // The first probe could not be sent (the master is away): proves nothing, asks again.
    let now = h.now();
    let failed = Err(PublishError::Unconfigured {
        reason: "test".into(),
    });
    h.core.handle_salt_reply(
        "j_1",
        Purpose::Probe(vec!["a".into()]),
        failed,
        &mut NoShuffle,
        now,
    );
    h.collect();
    h.advance_to(20 * S);
    let (second, _) = h.published("j_1", &Purpose::Probe(vec!["a".into()]));
    assert_ne!(probe, second);
    h.publish_reply("j_1", Purpose::Probe(vec!["a".into()]), &second, &["a"]);
    // No answer to the probe: the job cache is read before `a` is given up on.
    h.advance_to(30 * S);
    let asked = h
        .effects
        .iter()
        .any(|e| matches!(e, Effect::ReadJobCache { instance, .. } if instance == "j_1"));
    assert!(asked);
    assert_eq!(h.results(), [("j_1".into(), "b".into(), 0)]);
    let now = h.now();
    h.core.handle_cached_returns("j_1", Vec::new(), now);
    h.collect();
    assert_eq!(
        h.results(),
        [
            ("j_1".into(), "b".into(), 0),
            ("j_1".into(), "a".into(), 255)
        ]
    );
}

#[test]
fn a_kill_reaches_confirmed_targets_at_once_and_others_as_they_confirm() {
    let mut h = Harness::new(&job_yaml("j", "a,b", ""));
    h.fire("j", "j_1");
    let (jid, _) = h.published("j_1", &Purpose::Launch);
    h.publish_reply("j_1", Purpose::Launch, &jid, &["a", "b"]);
    h.hub("j_1", "a", HubEventKind::Heartbeat, S);
    let now = h.now();
    h.core.kill("j_1", None, now).unwrap();
    h.bus(Event::job_return(
        &jid,
        "b",
        "cmd.run_all",
        0,
        Some(""),
        false,
    ));
    h.collect();
    let kills: Vec<&str> = h
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Hub(HubCommand::Kill { machine, .. }) => Some(machine.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(kills, ["a", "b"]);
    assert_eq!(
        h.core.kill("nope", None, now),
        Err(Refusal::NotRunning("nope".into()))
    );
}

/// The machines a wrapper may speak for are the ones Salt named: the publish reply's, a
/// batch's list before it is published, and a minion whose return Salt delivered.
#[test]
fn only_machines_salt_named_are_named_to_the_hub() {
    let named = |h: &Harness| -> Vec<String> {
        h.pick(|e| match e {
            Effect::Hub(HubCommand::Name { machines, .. }) => Some(machines.clone()),
            _ => None,
        })
        .concat()
    };
    let mut h = Harness::new(&job_yaml("j", "a,b", ""));
    h.fire("j", "j_1");
    let registered = h.effects.iter().find_map(|e| match e {
        Effect::Hub(HubCommand::Register {
            machines,
            tokenless,
            ..
        }) => Some((machines.clone(), *tokenless)),
        _ => None,
    });
    // Nobody yet, and sp-wrapper's run needs its token.
    assert_eq!(registered, Some((vec![], false)));
    let (jid, _) = h.published("j_1", &Purpose::Launch);
    h.publish_reply("j_1", Purpose::Launch, &jid, &["a", "b"]);
    assert_eq!(named(&h), ["a", "b"]);
    // A return from a minion the reply did not list (a syndic's): Salt vouches for it.
    h.bus(Event::job_return(
        &jid,
        "c",
        "cmd.run_all",
        0,
        Some(""),
        false,
    ));
    assert_eq!(named(&h), ["a", "b", "c"]);
    h.bus(Event::job_return(
        &jid,
        "a",
        "cmd.run_all",
        0,
        Some(""),
        false,
    ));
    assert_eq!(
        named(&h),
        ["a", "b", "c"],
        "a known target is not named again"
    );

    // A batch's list is named before its publish.
    let mut h = Harness::new(&job_yaml("k", "a,b", "  batch_size: 1\n"));
    h.fire("k", "k_1");
    let (ping, _) = h.published("k_1", &Purpose::Resolve);
    h.publish_reply("k_1", Purpose::Resolve, &ping, &["a", "b"]);
    for m in ["a", "b"] {
        h.bus(Event::job_return(&ping, m, "test.ping", 0, None, false));
    }
    let name = h
        .effects
        .iter()
        .position(|e| matches!(e, Effect::Hub(HubCommand::Name { .. })));
    let launch = h.effects.iter().position(|e| {
        matches!(
            e,
            Effect::Publish {
                purpose: Purpose::Launch,
                ..
            }
        )
    });
    assert!(
        name.is_some() && name < launch,
        "named before it is published"
    );
    assert_eq!(named(&h), ["a"]);
}

#[test]
fn the_original_wrapper_is_let_in_only_where_the_operator_allowed_it() {
    let registered = |yaml: &str| {
        let mut h = Harness::new(yaml);
        h.fire("j", "j_1");
        h.effects.iter().find_map(|e| match e {
            Effect::Hub(HubCommand::Register { tokenless, .. }) => Some(*tokenless),
            _ => None,
        })
    };
    let original = "  wrapper_path: /usr/local/bin/sp_wrapper.py\n";
    let allow = "saltpeter_config:\n  allow_legacy_wrappers: true\n";
    assert_eq!(registered(&job_yaml("j", "a", original)), Some(false));
    let allowed = format!("{allow}{}", job_yaml("j", "a", original));
    assert_eq!(registered(&allowed), Some(true));
    // sp-wrapper always sends its token, whatever the setting.
    let ours = format!(
        "{allow}{}",
        job_yaml("j", "a", "  wrapper_path: /opt/sp-wrapper\n")
    );
    assert_eq!(registered(&ours), Some(false));
}

/// Phase 1 stays honest: a probe the master cannot take is retried with backoff forever while
/// the target shows why it waits; a kill still ends it; Salt's "no such minion" ends it at once.
#[test]
fn an_undelivered_probe_waits_with_its_reason_and_salts_refusal_ends_the_target() {
    let probe_fails = |h: &mut Harness, minion: &str| {
        let failed = Err(PublishError::Timeout {
            endpoint: "tcp://127.0.0.1:4506".into(),
            timeout: 10 * S,
        });
        h.probe_reply(minion, failed);
    };
    let waiting = |h: &Harness| -> Vec<Option<String>> {
        h.pick(|e| match e {
            Effect::Record(RunEvent::Waiting { why, .. }) => Some(why.clone()),
            _ => None,
        })
    };
    let probes = |h: &Harness| {
        h.effects
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::Publish {
                        purpose: Purpose::Probe(_),
                        ..
                    }
                )
            })
            .count()
    };
    let (mut h, _) = Harness::launched("a,b", &["a", "b"]);
    h.hub("j_1", "b", HubEventKind::Heartbeat, S);
    h.hub("j_1", "b", HubEventKind::Completed { retcode: 0 }, S);
    // An hour of a master that times out every probe: `a` is never given up on.
    let mut t = 10 * S;
    h.advance_to(t);
    for _ in 0..40 {
        assert_eq!(probes(&h), waiting(&h).len() + 1);
        probe_fails(&mut h, "a");
        let why = waiting(&h).last().cloned().flatten().expect("a reason");
        assert!(
            why.starts_with(
                "probe not delivered: the Salt master at tcp://127.0.0.1:4506 did not answer"
            ),
            "{why}"
        );
        assert!(why.contains("next try at"), "{why}");
        t = h.core.next_deadline().expect("a retry is due");
        h.advance_to(t);
    }
    assert!(t > 3600 * S, "retried for an hour: {t:?}");
    assert!(
        !h.results().iter().any(|(_, m, _)| m == "a"),
        "never ended by a master's trouble"
    );
    // Delivered at last: the reason is cleared.
    let (probe, _) = h.published("j_1", &Purpose::Probe(vec!["a".into()]));
    h.publish_reply("j_1", Purpose::Probe(vec!["a".into()]), &probe, &["a"]);
    assert_eq!(waiting(&h).last(), Some(&None));

    // Another run: Salt says it knows no such minion: 255 at once, with Salt's words.
    let (mut h, _) = Harness::launched("a", &["a"]);
    h.advance_to(10 * S);
    let refused = Err(PublishError::NoMinions {
        message: "No minions matched the target.".into(),
    });
    h.probe_reply("a", refused);
    assert_eq!(h.results(), [("j_1".into(), "a".into(), 255)]);
    let note = h.effects.iter().find_map(|e| match e {
        Effect::Record(RunEvent::TargetEnded { note, .. }) => note.clone(),
        _ => None,
    });
    assert_eq!(note.as_deref(), Some("No minions matched the target."));
}

/// A kill ends a target whose probe cannot be delivered within the kill wait.
#[test]
fn a_kill_ends_a_target_stuck_in_phase_one() {
    let (mut h, _) = Harness::launched("a", &["a"]);
    h.advance_to(10 * S);
    let failed = Err(PublishError::Unconfigured {
        reason: "test".into(),
    });
    h.probe_reply("a", failed);
    h.core.kill("j_1", None, h.now()).unwrap();
    h.collect();
    h.advance_to(20 * S);
    assert_eq!(h.results(), [("j_1".into(), "a".into(), 143)]);
    assert!(h.ended("j_1"));
}

/// The batches not yet published are stored as each one is published, and a run adopted after
/// a restart goes on with them.
#[test]
fn batches_left_are_stored_and_go_on_after_a_restart() {
    let stored = |h: &Harness| -> Vec<Vec<Vec<String>>> {
        h.pick(|e| match e {
            Effect::Record(RunEvent::BatchesLeft { batches, .. }) => Some(batches.clone()),
            _ => None,
        })
    };
    let lists = |v: &[&[&str]]| -> Vec<Vec<String>> {
        v.iter()
            .map(|b| b.iter().map(|m| m.to_string()).collect())
            .collect()
    };
    let mut h = Harness::new(&job_yaml("j", "a,b,c", "  batch_size: 1\n"));
    h.fire("j", "j_1");
    let (ping, _) = h.published("j_1", &Purpose::Resolve);
    h.publish_reply("j_1", Purpose::Resolve, &ping, &["a", "b", "c"]);
    for m in ["a", "b", "c"] {
        h.bus(Event::job_return(&ping, m, "test.ping", 0, None, false));
    }
    assert_eq!(stored(&h), [lists(&[&["a"], &["b"], &["c"]])]);
    let (jid, tgt) = h.published("j_1", &Purpose::Launch);
    assert_eq!(tgt, Tgt::List(vec!["a".into()]));
    h.publish_reply("j_1", Purpose::Launch, &jid, &["a"]);
    assert_eq!(stored(&h)[1], lists(&[&["b"], &["c"]]));

    // The daemon restarts while the first batch runs: the store has this.
    let in_flight = InFlight {
        claimed_by: None,
        started: None,
        scheduled: None,
        instance: "j_1".into(),
        job: "j".into(),
        token: "token".into(),
        jid: Some(jid.clone()),
        open: vec![crate::history::OpenTarget {
            machine: "a".into(),
            confirmed: true,
            next_seq: 0,
        }],
        done: Vec::new(),
        batches: lists(&[&["b"], &["c"]]),
        launching: None,
    };
    let mut h = Harness::new(&job_yaml("j", "a,b,c", "  batch_size: 1\n"));
    let job = h.jobs["j"].clone();
    let settings = h.settings.clone();
    let now = h.now();
    h.core.adopt(&in_flight, Some(&job), &settings, now);
    h.collect();
    h.hub("j_1", "a", HubEventKind::Completed { retcode: 0 }, S);
    let (second, tgt) = h.published("j_1", &Purpose::Launch);
    assert_eq!(tgt, Tgt::List(vec!["b".into()]), "the second batch follows");
    h.publish_reply("j_1", Purpose::Launch, &second, &["b"]);
    assert_eq!(stored(&h).last(), Some(&lists(&[&["c"]])));
    h.hub("j_1", "b", HubEventKind::Completed { retcode: 0 }, 2 * S);
    let (third, tgt) = h.published("j_1", &Purpose::Launch);
    assert_eq!(tgt, Tgt::List(vec!["c".into()]));
    h.publish_reply("j_1", Purpose::Launch, &third, &["c"]);
    assert_eq!(stored(&h).last(), Some(&Vec::new()), "nothing left");
    h.hub("j_1", "c", HubEventKind::Completed { retcode: 0 }, 3 * S);
    assert!(h.ended("j_1"));
    assert_eq!(h.results().len(), 3);
}

/// A restart after a batch ended but before the next was published: the next one starts.
#[test]
fn a_restart_between_batches_publishes_the_next_one() {
    let in_flight = InFlight {
        claimed_by: None,
        started: None,
        scheduled: None,
        instance: "j_1".into(),
        job: "j".into(),
        token: "token".into(),
        jid: Some("20261130000000000001".into()),
        open: Vec::new(),
        done: vec![("a".into(), 0)],
        batches: vec![vec!["b".into()]],
        launching: None,
    };
    let mut h = Harness::new(&job_yaml("j", "a,b", "  batch_size: 1\n"));
    let job = h.jobs["j"].clone();
    let settings = h.settings.clone();
    let now = h.now();
    h.core.adopt(&in_flight, Some(&job), &settings, now);
    h.collect();
    let (_, tgt) = h.published("j_1", &Purpose::Launch);
    assert_eq!(tgt, Tgt::List(vec!["b".into()]));
    assert!(!h.ended("j_1"));
}

/// A wrapper cut off past its heartbeat deadline (253) that comes back after the run ended:
/// its output is stored, its result kept as a note and acknowledged once stored.
#[test]
fn a_late_result_after_253_is_recorded_as_a_note_and_acknowledged() {
    let (mut h, _) = Harness::launched("a", &["a"]);
    h.hub("j_1", "a", HubEventKind::Heartbeat, S);
    h.advance_to(16 * S);
    assert_eq!(h.results(), [("j_1".into(), "a".into(), 253)]);
    assert!(h.ended("j_1"));
    let output = HubEventKind::Output {
        data: "more\n".into(),
        seq: 4,
    };
    h.hub("j_1", "a", output, 60 * S);
    h.hub("j_1", "a", HubEventKind::Completed { retcode: 0 }, 60 * S);
    let late = h.effects.iter().any(|e| {
        matches!(e, Effect::Record(RunEvent::LateResult { machine, retcode: 0, .. }) if machine == "a")
    });
    assert!(late, "the late result is kept");
    let stored_output = h
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Record(RunEvent::Output { data, .. }) if data == "more\n"));
    assert!(stored_output);
    assert!(matches!(
        h.effects.last(),
        Some(Effect::HubAfterCommit(HubCommand::ConfirmComplete { .. }))
    ));
    assert_eq!(h.results().len(), 1, "the result stands");
}

/// A restart before the publish reply was recorded: the launch is sent again under the jid it
/// was stored with (minions that got it ignore a jid they ran), never under a new one; a
/// restart while the targets were being resolved starts the run over (nothing ran yet).
#[test]
fn a_launch_without_a_recorded_reply_is_sent_again_under_its_jid() {
    let adopt = |yaml: &str, run: InFlight| -> Harness {
        let mut h = Harness::new(yaml);
        let job = h.jobs["j"].clone();
        let settings = h.settings.clone();
        let now = h.now();
        h.core.adopt(&run, Some(&job), &settings, now);
        h.collect();
        h
    };
    let in_flight =
        |jid: Option<&str>, launching: Option<&str>, batches: Vec<Vec<String>>| InFlight {
            claimed_by: None,
            started: None,
            scheduled: None,
            instance: "j_1".into(),
            job: "j".into(),
            token: "token".into(),
            jid: jid.map(String::from),
            open: Vec::new(),
            done: Vec::new(),
            batches,
            launching: launching.map(String::from),
        };
    // The whole job's launch.
    let mut h = adopt(
        &job_yaml("j", "a,b", ""),
        in_flight(None, Some("J1"), vec![]),
    );
    let (jid, tgt) = h.published("j_1", &Purpose::Launch);
    assert_eq!(
        (jid.as_str(), tgt),
        ("J1", Tgt::List(vec!["a".into(), "b".into()]))
    );
    h.publish_reply("j_1", Purpose::Launch, "J1", &["a", "b"]);
    h.hub("j_1", "a", HubEventKind::Completed { retcode: 0 }, S);
    h.hub("j_1", "b", HubEventKind::Completed { retcode: 0 }, S);
    assert!(h.ended("j_1"));

    // The first of two batches.
    let batches = vec![vec!["a".to_string()], vec!["b".to_string()]];
    let h = adopt(
        &job_yaml("j", "a,b", "  batch_size: 1\n"),
        in_flight(None, Some("J1"), batches),
    );
    let (jid, tgt) = h.published("j_1", &Purpose::Launch);
    assert_eq!((jid.as_str(), tgt), ("J1", Tgt::List(vec!["a".into()])));

    // The second batch, sent after the first was done.
    let h = adopt(
        &job_yaml("j", "a,b", "  batch_size: 1\n"),
        InFlight {
            claimed_by: None,
            started: None,
            scheduled: None,
            done: vec![("a".into(), 0)],
            ..in_flight(Some("J1"), Some("J2"), vec![vec!["b".to_string()]])
        },
    );
    let (jid, tgt) = h.published("j_1", &Purpose::Launch);
    assert_eq!((jid.as_str(), tgt), ("J2", Tgt::List(vec!["b".into()])));

    // Stopped while resolving: resolved again, then launched under a new jid.
    let h = adopt(
        &job_yaml("j", "a,b", "  batch_size: 1\n"),
        in_flight(None, None, vec![]),
    );
    h.published("j_1", &Purpose::Resolve);
    assert!(!h.ended("j_1"));
}

/// A launch that never reached the master (it could not be connected to while the launch was
/// retried) says so, so the ledger records its slot as missed; one that may have reached it (a
/// timeout) or a later batch does not.
#[test]
fn a_launch_that_never_reached_the_master_is_not_launched() {
    let not_launched = |h: &Harness| -> Vec<String> {
        h.pick(|e| match e {
            Effect::Record(RunEvent::NotLaunched { instance, .. }) => Some(instance.clone()),
            _ => None,
        })
    };
    let connect = || {
        Err(PublishError::Connect {
            endpoint: "tcp://127.0.0.1:4506".into(),
            timeout: std::time::Duration::from_secs(5),
            reason: "refused".into(),
        })
    };
    let mut h = Harness::new(&job_yaml("j", "a", ""));
    h.fire("j", "j_1");
    let now = h.now();
    h.core
        .handle_salt_reply("j_1", Purpose::Launch, connect(), &mut NoShuffle, now);
    h.collect();
    assert_eq!(not_launched(&h), ["j_1"]);
    assert!(h.ended("j_1"));

    let mut h = Harness::new(&job_yaml("j", "a", ""));
    h.fire("j", "j_1");
    let now = h.now();
    let timeout = Err(PublishError::Timeout {
        endpoint: "tcp://127.0.0.1:4506".into(),
        timeout: std::time::Duration::from_secs(5),
    });
    h.core
        .handle_salt_reply("j_1", Purpose::Launch, timeout, &mut NoShuffle, now);
    h.collect();
    assert!(
        not_launched(&h).is_empty(),
        "a timeout may have delivered it"
    );

    // The second of two batches cannot be sent: the slot did fire.
    let mut h = Harness::new(&job_yaml("j", "a,b", "  batch_size: 1\n"));
    h.fire("j", "j_1");
    let (ping, _) = h.published("j_1", &Purpose::Resolve);
    h.publish_reply("j_1", Purpose::Resolve, &ping, &["a", "b"]);
    for m in ["a", "b"] {
        h.bus(Event::job_return(&ping, m, "test.ping", 0, None, false));
    }
    let (jid, _) = h.published("j_1", &Purpose::Launch);
    h.publish_reply("j_1", Purpose::Launch, &jid, &["a"]);
    h.hub("j_1", "a", HubEventKind::Heartbeat, S);
    h.hub("j_1", "a", HubEventKind::Completed { retcode: 0 }, 2 * S);
    let now = h.now();
    h.core
        .handle_salt_reply("j_1", Purpose::Launch, connect(), &mut NoShuffle, now);
    h.collect();
    assert!(not_launched(&h).is_empty());
}

/// Another daemon took the run over (this one's lease lapsed): it is let go with nothing
/// recorded, its wrappers released, and its deadlines judge nothing any more.
#[test]
fn a_released_run_records_nothing_and_no_deadline_judges_it() {
    let mut h = Harness::confirmed("a");
    assert!(h.core.next_deadline().is_some());
    let before = h.effects.len();
    assert!(h.core.release("j_1"));
    h.collect();
    let after: Vec<&Effect> = h.effects[before..].iter().collect();
    assert!(
        matches!(after.as_slice(), [Effect::Hub(HubCommand::Release { instance })] if instance == "j_1"),
        "{after:?}"
    );
    // Long past its heartbeat deadline: nothing is judged, nothing recorded.
    h.advance_to(60 * S);
    assert!(h.results().is_empty() && !h.ended("j_1"));
    assert_eq!((h.core.next_deadline(), h.core.runs()), (None, 0));
    assert_eq!(h.core.running_instance("j"), None);
    assert!(!h.core.release("j_1"), "released once");
}
