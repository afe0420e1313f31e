//! Registry tests with virtual time: every instant is an offset from one origin, nothing
//! sleeps, and the outputs are checked as values.

use std::time::Duration;

use super::*;
use crate::protocol::Header;

const STAMP: &str = "2026-01-01T00:00:00.000000+00:00";
const MS: Duration = Duration::from_millis(1);

struct Hub {
    reg: Registry,
    t0: Instant,
}

impl Hub {
    fn new() -> Hub {
        Hub {
            reg: Registry::new(),
            t0: Instant::now(),
        }
    }

    fn at(&self, offset: Duration) -> Instant {
        self.t0 + offset
    }

    fn register(&mut self, instance: &str, machines: &[&str], token: Option<&str>) {
        self.register_as(instance, machines, token, false);
    }

    fn register_as(
        &mut self,
        instance: &str,
        machines: &[&str],
        token: Option<&str>,
        tokenless: bool,
    ) {
        self.command(
            HubCommand::Register {
                instance: instance.into(),
                job_name: "job".into(),
                machines: machines.iter().map(|s| s.to_string()).collect(),
                token: token.map(String::from),
                tokenless,
            },
            Duration::ZERO,
        );
    }

    fn command(&mut self, command: HubCommand, offset: Duration) {
        let now = self.at(offset);
        self.reg.handle_command(command, now, STAMP);
    }

    fn kill(&mut self, instance: &str, machine: &str, offset: Duration) {
        let command = HubCommand::Kill {
            instance: instance.into(),
            machine: machine.into(),
        };
        self.command(command, offset);
    }

    fn message(&mut self, conn: ConnId, msg: WrapperMsg, offset: Duration) -> Vec<Output> {
        let at = self.at(offset);
        self.reg.handle_message(conn, msg, at, STAMP);
        self.drain()
    }

    fn timeout(&mut self, offset: Duration) -> Vec<Output> {
        let now = self.at(offset);
        self.reg.handle_timeout(now, STAMP);
        self.drain()
    }

    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.reg.poll_output()).collect()
    }
}

fn header(instance: &str, machine: &str) -> Header {
    Header {
        job_name: "job".into(),
        job_instance: instance.into(),
        machine: machine.into(),
        timestamp: None,
    }
}

fn ext(token: Option<&str>) -> Ext {
    Ext {
        protocol: Some(1),
        token: token.map(String::from),
    }
}

fn connect(instance: &str, machine: &str, token: Option<&str>) -> WrapperMsg {
    WrapperMsg::Connect {
        header: header(instance, machine),
        ext: ext(token),
        resume: None,
    }
}

fn output(instance: &str, machine: &str, seq: i64, data: &str) -> WrapperMsg {
    WrapperMsg::Output {
        header: header(instance, machine),
        stream: "stdout".into(),
        data: data.into(),
        seq,
        ext: ext(Some("tok")),
    }
}

fn complete(instance: &str, machine: &str, retcode: i64) -> WrapperMsg {
    WrapperMsg::Complete {
        header: header(instance, machine),
        retcode,
        seq: None,
        ext: ext(Some("tok")),
    }
}

fn heartbeat(instance: &str, machine: &str) -> WrapperMsg {
    WrapperMsg::Heartbeat {
        header: header(instance, machine),
        ext: ext(Some("tok")),
    }
}

fn sends(outputs: &[Output]) -> Vec<(ConnId, DaemonMsg)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { conn, msg } => Some((*conn, msg.clone())),
            _ => None,
        })
        .collect()
}

fn events(outputs: &[Output]) -> Vec<HubEventKind> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.kind.clone()),
            _ => None,
        })
        .collect()
}

fn ack(ack_type: AckType, seq: Option<i64>) -> DaemonMsg {
    DaemonMsg::Ack {
        ack_type,
        seq,
        timestamp: STAMP.into(),
        protocol: None,
        window: None,
    }
}

fn kill_msg(instance: &str, machine: &str) -> DaemonMsg {
    DaemonMsg::Kill {
        job_name: "job".into(),
        job_instance: instance.into(),
        machine: machine.into(),
        timestamp: STAMP.into(),
    }
}

fn error_code(msg: &DaemonMsg) -> &str {
    match msg {
        DaemonMsg::Error { code, .. } => code,
        other => panic!("not an error: {other:?}"),
    }
}

#[test]
fn binds_on_the_first_message_of_any_kind_and_stamps_events_at_arrival() {
    let mut hub = Hub::new();
    hub.register("i1", &["m1", "m2"], Some("tok"));
    hub.reg.handle_opened(1);
    // A heartbeat first (a wrapper that reconnected mid-job): it binds all the same.
    let out = hub.message(1, heartbeat("i1", "m1"), 5 * MS);
    assert_eq!(
        out,
        [Output::Event(HubEvent {
            instance: "i1".into(),
            machine: "m1".into(),
            at: hub.at(5 * MS),
            kind: HubEventKind::Heartbeat,
            held: Default::default(),
        })]
    );
    // The connection speaks for m1 only; it is told so and stays open.
    let out = hub.message(1, heartbeat("i1", "m2"), 6 * MS);
    let sent = sends(&out);
    assert_eq!(sent.len(), 1);
    assert_eq!(error_code(&sent[0].1), codes::BAD_MESSAGE);
    assert!(!out.contains(&Output::Close { conn: 1 }));
    // A second connection takes over; the first one's close is no disconnect.
    hub.reg.handle_opened(2);
    hub.message(2, connect("i1", "m1", Some("tok")), 7 * MS);
    hub.reg.handle_closed(1, hub.at(8 * MS));
    assert_eq!(hub.drain(), []);
    hub.reg.handle_closed(2, hub.at(9 * MS));
    assert_eq!(
        hub.drain(),
        [Output::Event(HubEvent {
            instance: "i1".into(),
            machine: "m1".into(),
            at: hub.at(9 * MS),
            kind: HubEventKind::Disconnected,
            held: Default::default(),
        })]
    );
}

#[test]
fn connect_is_acknowledged_with_the_window_and_last_seq() {
    let mut hub = Hub::new();
    hub.reg.adopt(&Adopted {
        instance: "i1".into(),
        job_name: "job".into(),
        token: Some("tok".into()),
        tokenless: false,
        targets: vec![("m1".into(), 5)],
    });
    hub.reg.handle_opened(1);
    let out = hub.message(1, connect("i1", "m1", Some("tok")), MS);
    assert_eq!(
        sends(&out),
        [(
            1,
            DaemonMsg::Ack {
                ack_type: AckType::Connect,
                seq: Some(4),
                timestamp: STAMP.into(),
                protocol: Some(protocol::PROTOCOL_VERSION),
                window: Some(WINDOW),
            }
        )]
    );
    assert_eq!(events(&out), [HubEventKind::Connected { protocol: 1 }]);
}

#[test]
fn wrong_or_missing_token_is_refused_and_closed() {
    let mut hub = Hub::new();
    hub.register("i1", &["m1"], Some("tok"));
    for (conn, token) in [
        (1, Some("other")),
        (2, None),
        (5, Some("tok2")),
        (6, Some("")),
    ] {
        hub.reg.handle_opened(conn);
        let out = hub.message(conn, connect("i1", "m1", token), MS);
        let sent = sends(&out);
        assert_eq!(sent.len(), 1, "{token:?}");
        assert_eq!(error_code(&sent[0].1), codes::BAD_TOKEN);
        assert_eq!(out.last(), Some(&Output::Close { conn }));
        assert_eq!(events(&out), []);
    }
    // The refusal of a tokenless wrapper names the setting that would let it in.
    hub.reg.handle_opened(7);
    let out = hub.message(7, connect("i1", "m1", None), MS);
    match &sends(&out)[0].1 {
        DaemonMsg::Error { message, .. } => assert!(message.contains("allow_legacy_wrappers")),
        other => panic!("{other:?}"),
    }
    // Legacy wrappers (no token at all) are let in where the run allows them; a wrong token
    // never is.
    hub.register_as("i2", &["m1"], Some("tok"), true);
    hub.reg.handle_opened(3);
    let out = hub.message(3, connect("i2", "m1", None), MS);
    assert_eq!(events(&out), [HubEventKind::Connected { protocol: 1 }]);
    hub.reg.handle_opened(4);
    let out = hub.message(4, connect("i2", "m1", Some("other")), MS);
    assert_eq!(out.last(), Some(&Output::Close { conn: 4 }));
}

#[test]
fn only_machines_salt_named_may_speak_for_a_run() {
    let mut hub = Hub::new();
    // Registered before the publish reply: no machine is known yet.
    hub.register("i1", &[], Some("tok"));
    hub.reg.handle_opened(1);
    let out = hub.message(1, connect("i1", "m1", Some("tok")), MS);
    assert_eq!(error_code(&sends(&out)[0].1), codes::NOT_A_TARGET);
    assert_eq!(out.last(), Some(&Output::Close { conn: 1 }));
    assert_eq!(events(&out), []);
    // Salt names it: the wrapper's next try is taken; a made-up machine still is not.
    hub.command(
        HubCommand::Name {
            instance: "i1".into(),
            machines: vec!["m1".into()],
        },
        2 * MS,
    );
    hub.reg.handle_opened(2);
    let out = hub.message(2, connect("i1", "m1", Some("tok")), 3 * MS);
    assert_eq!(events(&out), [HubEventKind::Connected { protocol: 1 }]);
    hub.reg.handle_opened(3);
    let out = hub.message(3, complete("i1", "made-up", 0), 3 * MS);
    assert_eq!(error_code(&sends(&out)[0].1), codes::NOT_A_TARGET);
    assert_eq!(events(&out), []);
    // Naming again changes nothing for a target that is connected.
    hub.command(
        HubCommand::Name {
            instance: "i1".into(),
            machines: vec!["m1".into()],
        },
        4 * MS,
    );
    let out = hub.message(2, heartbeat("i1", "m1"), 5 * MS);
    assert_eq!(events(&out), [HubEventKind::Heartbeat]);
}

#[test]
fn output_is_taken_in_order_once_across_reconnects() {
    let mut hub = Hub::new();
    hub.register("i1", &["m1"], Some("tok"));
    hub.reg.handle_opened(1);
    hub.message(1, connect("i1", "m1", Some("tok")), MS);
    let out = hub.message(1, output("i1", "m1", 0, "a"), MS);
    assert_eq!(sends(&out), [(1, ack(AckType::Output, Some(0)))]);
    assert_eq!(
        events(&out),
        [HubEventKind::Output {
            data: "a".into(),
            seq: 0
        }]
    );
    // A duplicate is acknowledged, not reported.
    let out = hub.message(1, output("i1", "m1", 0, "a"), MS);
    assert_eq!(sends(&out), [(1, ack(AckType::Output, Some(0)))]);
    assert_eq!(events(&out), []);
    // A gap is refused with what is expected.
    let out = hub.message(1, output("i1", "m1", 2, "c"), MS);
    assert_eq!(
        sends(&out),
        [(
            1,
            DaemonMsg::Nack {
                nack_type: "out_of_order".into(),
                expected_seq: 1,
                received_seq: 2,
                timestamp: STAMP.into(),
            }
        )]
    );
    assert_eq!(events(&out), []);
    // After a reconnect the wrapper resends what it had in flight: only the new is reported.
    hub.reg.handle_closed(1, hub.at(2 * MS));
    hub.reg.handle_opened(2);
    hub.message(2, connect("i1", "m1", Some("tok")), 3 * MS);
    let out = hub.message(2, output("i1", "m1", 0, "a"), 3 * MS);
    assert_eq!(events(&out), []);
    let out = hub.message(2, output("i1", "m1", 1, "b"), 3 * MS);
    assert_eq!(sends(&out), [(2, ack(AckType::Output, Some(1)))]);
    assert_eq!(
        events(&out),
        [HubEventKind::Output {
            data: "b".into(),
            seq: 1
        }]
    );
    let sync = WrapperMsg::SyncRequest {
        header: header("i1", "m1"),
        last_acked_seq: 1,
        next_seq: 2,
        ext: ext(Some("tok")),
    };
    let out = hub.message(2, sync, 4 * MS);
    assert_eq!(
        sends(&out),
        [(
            2,
            DaemonMsg::SyncResponse {
                last_seq: 1,
                timestamp: STAMP.into()
            }
        )]
    );
}

#[test]
fn a_kill_asked_before_the_target_connects_is_sent_when_it_binds() {
    let mut hub = Hub::new();
    hub.register("i1", &["m1"], Some("tok"));
    hub.kill("i1", "m1", Duration::ZERO);
    assert_eq!(hub.drain(), []);
    assert_eq!(hub.reg.poll_timeout(), None);
    hub.reg.handle_opened(1);
    let out = hub.message(1, connect("i1", "m1", Some("tok")), 40 * MS);
    assert_eq!(sends(&out).last(), Some(&(1, kill_msg("i1", "m1"))));
    assert_eq!(hub.reg.poll_timeout(), Some(hub.at(40 * MS) + KILL_RETRY));
}

#[test]
fn kills_are_retried_when_due_until_the_target_completes() {
    let mut hub = Hub::new();
    hub.register("i1", &["m1", "m2"], Some("tok"));
    hub.reg.handle_opened(1);
    hub.reg.handle_opened(2);
    hub.message(1, connect("i1", "m1", Some("tok")), Duration::ZERO);
    hub.message(2, connect("i1", "m2", Some("tok")), Duration::ZERO);
    hub.kill("i1", "m1", 100 * MS);
    assert_eq!(sends(&hub.drain()), [(1, kill_msg("i1", "m1"))]);
    assert_eq!(hub.reg.poll_timeout(), Some(hub.at(100 * MS) + KILL_RETRY));
    // Not due yet: nothing.
    assert_eq!(hub.timeout(600 * MS), []);
    // Due: m1 again, m2 never.
    let out = hub.timeout(1100 * MS);
    assert_eq!(sends(&out), [(1, kill_msg("i1", "m1"))]);
    assert_eq!(hub.reg.poll_timeout(), Some(hub.at(1100 * MS) + KILL_RETRY));
    // The wrapper lost its connection: the retry finds no one and waits for it.
    hub.reg.handle_closed(1, hub.at(1200 * MS));
    hub.drain();
    assert_eq!(hub.timeout(2100 * MS), []);
    assert_eq!(hub.reg.poll_timeout(), None);
    // It reconnects: the kill goes at once.
    hub.reg.handle_opened(3);
    let out = hub.message(3, connect("i1", "m1", Some("tok")), 2500 * MS);
    assert_eq!(sends(&out).last(), Some(&(3, kill_msg("i1", "m1"))));
    // It completes: no more kills, and the pending retry comes to nothing.
    let out = hub.message(3, complete("i1", "m1", 137), 2600 * MS);
    assert_eq!(events(&out), [HubEventKind::Completed { retcode: 137 }]);
    assert_eq!(hub.timeout(3500 * MS), []);
    assert_eq!(hub.reg.poll_timeout(), None);
    // A kill asked for after it completed is not sent either.
    hub.kill("i1", "m1", 4000 * MS);
    assert_eq!(hub.drain(), []);
}

#[test]
fn a_kill_asked_again_is_sent_at_once_and_the_old_retry_goes_stale() {
    let mut hub = Hub::new();
    hub.register("i1", &["m1"], Some("tok"));
    hub.reg.handle_opened(1);
    hub.message(1, connect("i1", "m1", Some("tok")), Duration::ZERO);
    hub.kill("i1", "m1", Duration::ZERO);
    hub.kill("i1", "m1", 500 * MS);
    assert_eq!(
        sends(&hub.drain()),
        [(1, kill_msg("i1", "m1")), (1, kill_msg("i1", "m1"))]
    );
    // The first schedule (1 s) is stale; the second (1.5 s) holds.
    assert_eq!(hub.timeout(1000 * MS), []);
    assert_eq!(sends(&hub.timeout(1500 * MS)), [(1, kill_msg("i1", "m1"))]);
}

#[test]
fn complete_is_acknowledged_once_the_engine_confirms_it() {
    let mut hub = Hub::new();
    hub.register("i1", &["m1"], Some("tok"));
    hub.reg.handle_opened(1);
    hub.message(1, connect("i1", "m1", Some("tok")), Duration::ZERO);
    hub.message(1, output("i1", "m1", 0, "a"), MS);
    let out = hub.message(1, complete("i1", "m1", 0), 2 * MS);
    assert_eq!(sends(&out), []);
    assert_eq!(events(&out), [HubEventKind::Completed { retcode: 0 }]);
    // Sent again before the engine recorded it: neither reported twice nor acknowledged.
    assert_eq!(hub.message(1, complete("i1", "m1", 0), 3 * MS), []);
    let confirm = HubCommand::ConfirmComplete {
        instance: "i1".into(),
        machine: "m1".into(),
    };
    hub.command(confirm, 4 * MS);
    assert_eq!(sends(&hub.drain()), [(1, ack(AckType::Complete, Some(1)))]);
    // The ack was lost and the wrapper asks again: acknowledged again, not reported.
    let out = hub.message(1, complete("i1", "m1", 0), 5 * MS);
    assert_eq!(sends(&out), [(1, ack(AckType::Complete, Some(1)))]);
    assert_eq!(events(&out), []);
}

#[test]
fn unregistered_runs_and_strangers_get_job_not_found() {
    let mut hub = Hub::new();
    hub.register("i1", &["m1"], Some("tok"));
    hub.reg.handle_opened(9);
    hub.message(9, connect("i1", "m1", Some("tok")), Duration::ZERO);
    hub.kill("i1", "m1", Duration::ZERO);
    hub.drain();
    hub.command(
        HubCommand::Unregister {
            instance: "i1".into(),
        },
        MS,
    );
    // Its pending kill is not sent again; its target, which never completed, is heard only
    // for late results, then forgotten.
    assert_eq!(hub.timeout(KILL_RETRY), []);
    assert_eq!(hub.reg.poll_timeout(), Some(hub.at(MS) + LATE_RESULTS_FOR));
    assert_eq!(hub.timeout(MS + LATE_RESULTS_FOR), []);
    assert_eq!(hub.reg.poll_timeout(), None);
    hub.reg.handle_opened(1);
    let out = hub.message(
        1,
        connect("i1", "m1", Some("tok")),
        2 * MS + LATE_RESULTS_FOR,
    );
    assert_eq!(error_code(&sends(&out)[0].1), codes::JOB_NOT_FOUND);
    assert_eq!(out.last(), Some(&Output::Close { conn: 1 }));
    // A machine that is not a target of a listed run.
    hub.register("i2", &["m1"], Some("tok"));
    hub.reg.handle_opened(2);
    let out = hub.message(2, connect("i2", "m9", Some("tok")), 3 * MS);
    match &sends(&out)[0].1 {
        DaemonMsg::Error { code, message, .. } => {
            assert_eq!(code, codes::NOT_A_TARGET);
            assert_eq!(message, "m9 is not (yet) a target of i2");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(out.last(), Some(&Output::Close { conn: 2 }));
}

#[test]
fn a_bad_frame_is_answered_and_the_connection_stays() {
    let mut hub = Hub::new();
    hub.reg.handle_opened(1);
    hub.reg.handle_bad_frame(1, "malformed message: x", STAMP);
    let out = hub.drain();
    assert_eq!(out.len(), 1);
    assert_eq!(error_code(&sends(&out)[0].1), codes::BAD_MESSAGE);
}

#[test]
fn a_retry_among_20000_targets_visits_only_the_due_kill() {
    const N: usize = 20_000;
    let mut hub = Hub::new();
    let machines: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    let names: Vec<&str> = machines.iter().map(String::as_str).collect();
    hub.register("i1", &names, Some("tok"));
    for (i, m) in machines.iter().enumerate() {
        let conn = i as ConnId;
        hub.reg.handle_opened(conn);
        hub.message(conn, connect("i1", m, Some("tok")), Duration::ZERO);
    }
    hub.kill("i1", "m777", Duration::ZERO);
    assert_eq!(sends(&hub.drain()), [(777, kill_msg("i1", "m777"))]);
    let due = hub.reg.poll_timeout().expect("a retry is scheduled");
    assert_eq!(due, hub.at(KILL_RETRY));
    hub.reg.kills_visited = 0;
    hub.reg.handle_timeout(due, STAMP);
    assert_eq!(sends(&hub.drain()), [(777, kill_msg("i1", "m777"))]);
    assert_eq!(hub.reg.kills_visited, 1);
    // Between retries nothing is visited at all.
    hub.reg.handle_timeout(due + KILL_RETRY / 2, STAMP);
    assert_eq!(hub.drain(), []);
    assert_eq!(hub.reg.kills_visited, 1);
}

/// A run's end keeps only the targets that never completed (the daemon ended them: heartbeat
/// lost), and only for LATE_RESULTS_FOR: their wrappers can still deliver output and result.
#[test]
fn an_ended_runs_silent_targets_are_heard_for_their_late_results_then_forgotten() {
    let mut hub = Hub::new();
    hub.register("i1", &["done", "cut-off"], Some("tok"));
    hub.reg.handle_opened(1);
    hub.message(1, connect("i1", "done", Some("tok")), MS);
    hub.message(1, complete("i1", "done", 0), MS);
    hub.command(
        HubCommand::ConfirmComplete {
            instance: "i1".into(),
            machine: "done".into(),
        },
        MS,
    );
    hub.drain();
    hub.command(
        HubCommand::Unregister {
            instance: "i1".into(),
        },
        10 * MS,
    );
    assert_eq!(
        hub.reg.poll_timeout(),
        Some(hub.at(10 * MS) + LATE_RESULTS_FOR)
    );
    // The completed target is gone at once.
    hub.reg.handle_opened(2);
    let out = hub.message(2, connect("i1", "done", Some("tok")), 20 * MS);
    assert_eq!(error_code(&sends(&out)[0].1), codes::NOT_A_TARGET);
    // The cut-off one reconnects a minute later: its output and result still arrive.
    let later = Duration::from_secs(60);
    hub.reg.handle_opened(3);
    let out = hub.message(3, connect("i1", "cut-off", Some("tok")), later);
    assert_eq!(events(&out), [HubEventKind::Connected { protocol: 1 }]);
    let out = hub.message(3, output("i1", "cut-off", 0, "late"), later);
    assert_eq!(sends(&out), [(3, ack(AckType::Output, Some(0)))]);
    let out = hub.message(3, complete("i1", "cut-off", 3), later);
    assert_eq!(events(&out), [HubEventKind::Completed { retcode: 3 }]);
    // A forged token is still refused.
    hub.reg.handle_opened(4);
    let out = hub.message(4, connect("i1", "cut-off", Some("guess")), later);
    assert_eq!(error_code(&sends(&out)[0].1), codes::BAD_TOKEN);
    // After the late window, the run is forgotten.
    let gone = Duration::from_millis(10) + LATE_RESULTS_FOR;
    hub.timeout(gone);
    assert_eq!(hub.reg.poll_timeout(), None);
    hub.reg.handle_opened(5);
    let out = hub.message(5, connect("i1", "cut-off", Some("tok")), gone);
    assert_eq!(error_code(&sends(&out)[0].1), codes::JOB_NOT_FOUND);
}

fn connect_resuming(instance: &str, machine: &str, resume: i64) -> WrapperMsg {
    WrapperMsg::Connect {
        header: header(instance, machine),
        ext: ext(Some("tok")),
        resume: Some(resume),
    }
}

/// A `resume` past what this daemon acknowledged is believed only from an adopted target's
/// first reconnection (acknowledged just before a crash), and never up to i64::MAX.
#[test]
fn a_resume_past_the_acknowledged_output_is_a_lie_unless_just_adopted() {
    let mut hub = Hub::new();
    hub.register("i1", &["m1"], Some("tok"));
    hub.reg.handle_opened(1);
    hub.message(1, connect("i1", "m1", Some("tok")), MS);
    hub.message(1, output("i1", "m1", 0, "a"), MS);
    for (conn, resume) in [(2, 1_000), (3, i64::MAX)] {
        hub.reg.handle_opened(conn);
        let out = hub.message(conn, connect_resuming("i1", "m1", resume), 2 * MS);
        assert_eq!(
            error_code(&sends(&out)[0].1),
            codes::BAD_MESSAGE,
            "{resume}"
        );
        assert_eq!(out.last(), Some(&Output::Close { conn }));
        assert_eq!(events(&out), [], "nothing reaches the run");
    }
    // The real wrapper goes on where it was.
    let out = hub.message(1, output("i1", "m1", 1, "b"), 3 * MS);
    assert_eq!(sends(&out), [(1, ack(AckType::Output, Some(1)))]);

    // Adopted: the first reconnection may report a gap; not to i64::MAX, and only once.
    let mut hub = Hub::new();
    let adopted = |hub: &mut Hub, instance: &str| {
        hub.reg.adopt(&Adopted {
            instance: instance.into(),
            job_name: "job".into(),
            token: Some("tok".into()),
            tokenless: false,
            targets: vec![("m1".into(), 5)],
        })
    };
    adopted(&mut hub, "i2");
    hub.reg.handle_opened(4);
    let out = hub.message(4, connect_resuming("i2", "m1", 7), MS);
    assert!(matches!(
        events(&out)[..],
        [
            HubEventKind::Output { seq: 7, .. },
            HubEventKind::Connected { .. }
        ]
    ));
    hub.reg.handle_opened(5);
    let out = hub.message(5, connect_resuming("i2", "m1", 20), 2 * MS);
    assert_eq!(error_code(&sends(&out)[0].1), codes::BAD_MESSAGE);
    adopted(&mut hub, "i3");
    hub.reg.handle_opened(6);
    let out = hub.message(6, connect_resuming("i3", "m1", i64::MAX), 3 * MS);
    assert_eq!(error_code(&sends(&out)[0].1), codes::BAD_MESSAGE);
}

/// Several daemons on one store: a run another daemon took over is let go (its wrappers'
/// connections closed without a word, so they reconnect elsewhere); a run adopted from
/// another daemon takes its wrappers at the stored seq.
#[test]
fn a_released_run_closes_its_wrappers_and_an_adopted_one_takes_them() {
    let mut hub = Hub::new();
    hub.register("i1", &["m1", "m2"], Some("tok"));
    for (conn, machine) in [(1, "m1"), (2, "m2")] {
        hub.reg.handle_opened(conn);
        hub.message(conn, connect("i1", machine, Some("tok")), MS);
    }
    hub.command(
        HubCommand::Release {
            instance: "i1".into(),
        },
        2 * MS,
    );
    let out = hub.drain();
    let mut closed: Vec<ConnId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Close { conn } => Some(*conn),
            _ => None,
        })
        .collect();
    closed.sort_unstable();
    assert_eq!((closed, out.len()), (vec![1, 2], 2), "{out:?}");
    // Nothing of it is left: a wrapper that comes back here is told the run is unknown.
    hub.reg.handle_opened(3);
    let out = hub.message(3, connect("i1", "m1", Some("tok")), 3 * MS);
    assert_eq!(error_code(&sends(&out)[0].1), codes::JOB_NOT_FOUND);
    // Adopted from a daemon whose lease lapsed: its wrapper resumes at the stored seq.
    hub.command(
        HubCommand::Adopt(Adopted {
            instance: "i9".into(),
            job_name: "job".into(),
            token: Some("tok9".into()),
            tokenless: false,
            targets: vec![("m1".into(), 5)],
        }),
        4 * MS,
    );
    hub.reg.handle_opened(4);
    let out = hub.message(4, connect("i9", "m1", Some("tok9")), 5 * MS);
    assert_eq!(events(&out), [HubEventKind::Connected { protocol: 1 }]);
    let out = hub.message(4, output("i9", "m1", 4, "seen before\n"), 6 * MS);
    assert!(
        !events(&out)
            .iter()
            .any(|e| matches!(e, HubEventKind::Output { .. })),
        "output below the stored seq is not taken again: {out:?}"
    );
}
