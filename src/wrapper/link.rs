//! The wrapper's side of the connection to the daemon: connect (and reconnect with backoff),
//! say who it is on every connection, stream the spool as numbered `output` messages with a
//! window of unacknowledged ones, heartbeat, resume after a reconnect from what the daemon
//! says it has, pass `kill` on, and deliver `complete` until the daemon acknowledges it.
//!
//! With several daemon URLs (daemons sharing a store, one adopting the runs of another that
//! died) the link fails over between them round robin: see [`Rotation`].

use std::collections::VecDeque;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};

use super::log::Log;
use super::settings::Settings;
use super::tls::{self, Conn};
use super::{Event, Shared};
use crate::protocol::{self, AckType, DaemonMsg, Ext, Header, WrapperMsg};

pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How one attempt at a daemon ended, short of delivering the result (which ends the link).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    /// No connection: refused, timed out, or the TLS or WebSocket handshake failed.
    Unreachable,
    /// Connected, then lost; `accepted`: the daemon had taken the run (`ack connect`).
    Lost { accepted: bool },
    /// Connected, but this daemon does not know the run (yet): another one may adopt it.
    Unknown,
}

/// Which daemon URL to try next, and how long to wait first. Round robin from the first URL;
/// the backoff is applied once per full round of failed attempts, not per URL, so a dead
/// daemon costs one failed connect before the next is tried. With one URL every attempt is a
/// round, which is the link's behaviour from before there could be several.
#[derive(Debug)]
struct Rotation {
    len: usize,
    current: usize,
    /// Attempts since the last pause, or since a daemon last took the run.
    failed: usize,
    backoff: Duration,
}

impl Rotation {
    fn new(len: usize) -> Rotation {
        Rotation {
            len: len.max(1),
            current: 0,
            failed: 0,
            backoff: MIN_BACKOFF,
        }
    }

    /// The index of the URL to try now.
    fn current(&self) -> usize {
        self.current
    }

    /// The attempt at the current URL ended so: moves on to the next URL and says how long to
    /// wait before trying it.
    fn next(&mut self, attempt: Attempt) -> Duration {
        if let Attempt::Lost { accepted } = attempt {
            // A daemon answered: the backoff starts over (as it always did on a connection);
            // one that had taken the run starts a new round with it.
            self.backoff = MIN_BACKOFF;
            if accepted {
                self.failed = 0;
            }
        }
        // A daemon that does not know the run counts as away: while another adopts it, the
        // rounds slow down like rounds of daemons that are down.
        self.failed += 1;
        self.current = (self.current + 1) % self.len;
        if self.failed < self.len {
            return Duration::ZERO;
        }
        self.failed = 0;
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        pause
    }
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    seq: i64,
    start: u64,
    end: u64,
    /// Sent on the current connection.
    sent: bool,
}

/// Sending state that survives reconnects.
struct Cursor {
    /// Seq of the next new output message.
    next_seq: i64,
    /// Stream offset of the next byte to send.
    offset: u64,
    /// Sent (or to be sent again), not yet acknowledged. A message is always sent again with
    /// the same seq and the same bytes: the daemon de-duplicates by seq.
    in_flight: VecDeque<InFlight>,
    /// The highest seq the daemon acknowledged.
    acked: i64,
    window: usize,
}

impl Cursor {
    /// Everything up to `seq` arrived: release it.
    fn acknowledge(&mut self, seq: i64, shared: &Shared) {
        let mut upto = None;
        while let Some(m) = self.in_flight.front() {
            if m.seq > seq {
                break;
            }
            upto = Some(m.end);
            self.in_flight.pop_front();
        }
        self.acked = self.acked.max(seq);
        if let Some(end) = upto {
            let mut st = shared.state.lock().expect("state lock");
            let _ = st.spool.release(end);
        }
    }

    /// The daemon has everything before `seq`: send the rest of what is in flight again.
    fn resend_from(&mut self, seq: i64, shared: &Shared) {
        self.acknowledge(seq - 1, shared);
        for m in &mut self.in_flight {
            m.sent = false;
        }
    }
}

/// Runs until the daemon acknowledged `complete`, or gave up on the run.
pub fn run(settings: &Settings, shared: Arc<Shared>, log: &Log) {
    let mut cursor = Cursor {
        next_seq: 0,
        offset: 0,
        in_flight: VecDeque::new(),
        acked: -1,
        window: 1,
    };
    for item in &settings.ignored_urls {
        log.normal(&format!(
            "ignoring {item:?} in SP_WEBSOCKET_URL: not a ws:// or wss:// URL"
        ));
    }
    let urls = &settings.websocket_urls;
    // With one daemon, one that does not know the run is final (as it always was); with
    // several, another may adopt the run, so it is one more daemon that is away.
    let failover = urls.len() > 1;
    let mut rotation = Rotation::new(urls.len());
    let mut connected_before = false;
    // Why the last daemon that answered would not take the run, for the give-up message.
    let mut refused: Option<String> = None;
    loop {
        if given_up(&shared, refused.as_deref()) {
            return;
        }
        let url = &urls[rotation.current()];
        let attempt = match connect(url, settings) {
            Ok(mut ws) => {
                let again = if connected_before { "re" } else { "" };
                log.normal(&format!("{again}connected to the daemon at {url}"));
                connected_before = true;
                let ended = session(
                    settings,
                    &shared,
                    &mut ws,
                    &mut cursor,
                    log,
                    failover,
                    refused.as_deref(),
                );
                match ended {
                    SessionEnd::Done => return,
                    SessionEnd::Lost { why, accepted } => {
                        log.normal(&format!("connection to the daemon at {url} lost: {why}"));
                        if accepted {
                            refused = None;
                        }
                        Attempt::Lost { accepted }
                    }
                    SessionEnd::Unknown(why) => {
                        log.normal(&format!(
                            "the daemon at {url} does not know this run (yet): trying the next"
                        ));
                        refused = Some(why);
                        Attempt::Unknown
                    }
                }
            }
            Err(why) => {
                log.debug(&format!("cannot connect to {url}: {why}"));
                Attempt::Unreachable
            }
        };
        std::thread::sleep(rotation.next(attempt));
    }
}

fn connect(url: &str, settings: &Settings) -> Result<WebSocket<Conn>, String> {
    let secure = url.starts_with("wss://");
    let rest = url.trim_start_matches("wss://").trim_start_matches("ws://");
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_matches(['[', ']']);
    let addrs = std::net::ToSocketAddrs::to_socket_addrs(authority).map_err(|e| e.to_string())?;
    let mut last = String::from("no address");
    for addr in addrs {
        let stream = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => s,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        stream.set_nodelay(true).ok();
        stream
            .set_read_timeout(Some(CONNECT_TIMEOUT))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let conn = if secure {
            let config = tls::client_config(settings.tls_ca_file.as_deref())?;
            Conn::tls(config, host, stream)?
        } else {
            Conn::Plain(stream)
        };
        let (ws, _) = tungstenite::client(url, conn).map_err(|e| e.to_string())?;
        ws.get_ref()
            .tcp()
            .set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(|e| e.to_string())?;
        return Ok(ws);
    }
    Err(last)
}

/// The job ended long ago and the daemon never took its result: stop trying. `refused`: why
/// the last daemon that answered would not take the run, if it would not.
fn given_up(shared: &Shared, refused: Option<&str>) -> bool {
    let mut st = shared.state.lock().expect("state lock");
    if st.deliver_until.is_some_and(|d| Instant::now() >= d) {
        st.rejected.get_or_insert_with(|| match refused {
            None => "the daemon did not acknowledge the result in time".into(),
            Some(why) => format!("no daemon acknowledged the result in time (last refusal: {why})"),
        });
        return true;
    }
    false
}

enum SessionEnd {
    Done,
    /// `accepted`: the daemon had taken the run on this connection.
    Lost {
        why: String,
        accepted: bool,
    },
    /// The daemon does not know the run, and another daemon may adopt it.
    Unknown(String),
}

fn header(settings: &Settings) -> Header {
    Header {
        job_name: settings.job_name.clone(),
        job_instance: settings.job_instance.clone(),
        machine: settings.machine.clone(),
        timestamp: Some(protocol::timestamp_now()),
    }
}

fn ext(settings: &Settings) -> Ext {
    Ext {
        protocol: Some(protocol::PROTOCOL_VERSION),
        token: settings.run_token.clone(),
    }
}

fn send(ws: &mut WebSocket<Conn>, msg: &WrapperMsg) -> Result<(), String> {
    ws.send(Message::text(msg.encode()))
        .map_err(|e| e.to_string())
}

fn session(
    settings: &Settings,
    shared: &Shared,
    ws: &mut WebSocket<Conn>,
    cursor: &mut Cursor,
    log: &Log,
    failover: bool,
    refused: Option<&str>,
) -> SessionEnd {
    // The daemon took the run (its `ack connect` came).
    let mut connect_acked = false;
    macro_rules! lost {
        ($why:expr) => {
            return SessionEnd::Lost {
                why: $why,
                accepted: connect_acked,
            }
        };
    }
    macro_rules! try_send {
        ($msg:expr) => {
            if let Err(e) = send(ws, &$msg) {
                lost!(e);
            }
        };
    }
    // Who we are, on every connection; `resume` tells the daemon what we think it has.
    let resume = (cursor.acked >= 0).then_some(cursor.acked);
    try_send!(WrapperMsg::Connect {
        header: header(settings),
        ext: ext(settings),
        resume
    });
    let pid = shared.state.lock().expect("state lock").pid;
    try_send!(WrapperMsg::Start {
        header: header(settings),
        pid,
        version: format!("sp-wrapper {}", crate::VERSION),
        ext: ext(settings),
    });
    // Nothing was sent on this connection yet. Output waits for the daemon's `ack connect`,
    // which says what it already has.
    for m in &mut cursor.in_flight {
        m.sent = false;
    }
    let mut last_heartbeat = Instant::now();
    let mut last_output = Instant::now();
    let mut complete_sent = false;
    loop {
        // A daemon that took the run is the one that did not acknowledge the result.
        if given_up(shared, refused.filter(|_| !connect_acked)) {
            return SessionEnd::Done;
        }
        // Incoming.
        match ws.read() {
            Ok(Message::Text(text)) => match DaemonMsg::decode(&text) {
                Ok(msg) => {
                    if matches!(
                        msg,
                        DaemonMsg::Ack {
                            ack_type: AckType::Connect,
                            ..
                        }
                    ) {
                        connect_acked = true;
                    }
                    match handle(msg, shared, cursor, log, failover) {
                        Handled::Continue => {}
                        Handled::Done => return SessionEnd::Done,
                        Handled::Resend => complete_sent = false,
                        Handled::Unknown(why) => return SessionEnd::Unknown(why),
                    }
                }
                Err(e) => log.normal(&format!("ignoring a message from the daemon: {e}")),
            },
            Ok(Message::Close(_)) => lost!("closed by the daemon".into()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => lost!(e.to_string()),
        }
        if last_heartbeat.elapsed() >= HEARTBEAT_EVERY {
            try_send!(WrapperMsg::Heartbeat {
                header: header(settings),
                ext: ext(settings)
            });
            last_heartbeat = Instant::now();
        }
        // Output, within the window.
        let (end, input_done, retcode, overflowing) = {
            let st = shared.state.lock().expect("state lock");
            (
                st.spool.end(),
                st.input_done,
                st.retcode,
                st.spool.overflowing(),
            )
        };
        if !connect_acked {
            continue;
        }
        // What is in flight but not sent on this connection goes first, byte for byte.
        for m in cursor.in_flight.iter_mut().filter(|m| !m.sent) {
            let bytes = {
                let mut st = shared.state.lock().expect("state lock");
                match st.spool.read(m.start, (m.end - m.start) as usize) {
                    Ok(b) => b,
                    Err(e) => lost!(format!("spool: {e}")),
                }
            };
            try_send!(WrapperMsg::Output {
                header: header(settings),
                stream: "stdout".into(),
                data: String::from_utf8_lossy(&bytes).into_owned(),
                seq: m.seq,
                ext: ext(settings),
            });
            m.sent = true;
        }
        while cursor.in_flight.len() < cursor.window && cursor.offset < end {
            let pending = end - cursor.offset;
            let due = pending >= protocol::MAX_OUTPUT_CHUNK as u64
                || input_done
                || last_output.elapsed() >= settings.output_interval;
            if !due {
                break;
            }
            let bytes = {
                let mut st = shared.state.lock().expect("state lock");
                match st.spool.read(cursor.offset, protocol::MAX_OUTPUT_CHUNK) {
                    Ok(b) => b,
                    Err(e) => lost!(format!("spool: {e}")),
                }
            };
            let take = utf8_boundary(
                &bytes,
                input_done && cursor.offset + bytes.len() as u64 == end,
            );
            if take == 0 {
                break;
            }
            let data = String::from_utf8_lossy(&bytes[..take]).into_owned();
            let seq = cursor.next_seq;
            try_send!(WrapperMsg::Output {
                header: header(settings),
                stream: "stdout".into(),
                data,
                seq,
                ext: ext(settings),
            });
            cursor.in_flight.push_back(InFlight {
                seq,
                start: cursor.offset,
                end: cursor.offset + take as u64,
                sent: true,
            });
            cursor.offset += take as u64;
            cursor.next_seq += 1;
            last_output = Instant::now();
        }
        // Completion, once every byte was sent and acknowledged.
        if let Some(retcode) = retcode
            && input_done
            && !overflowing
            && !complete_sent
            && cursor.offset == end
            && cursor.in_flight.is_empty()
        {
            try_send!(WrapperMsg::Complete {
                header: header(settings),
                retcode,
                seq: Some(cursor.next_seq),
                ext: ext(settings),
            });
            complete_sent = true;
        }
    }
}

enum Handled {
    Continue,
    Done,
    /// Send `complete` again (the daemon asked for a resync).
    Resend,
    /// The daemon does not know the run, and another daemon may adopt it.
    Unknown(String),
}

/// What a refusal from the daemon means for the run.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Refused for good: the link stops and the output goes to the local log.
    Fatal,
    /// Try the next daemon.
    NextDaemon,
    /// Not for good (e.g. Salt has not named this machine yet): the daemon closes the
    /// connection and the link connects again.
    Transient,
}

/// The hub answers `JOB_NOT_FOUND` for a run it does not know (never registered there, long
/// over, or not adopted yet) and `BAD_TOKEN` for a run it knows under another token (or one
/// that needs a token and got none). Daemons sharing a store share the run and its token, so a
/// wrong token is final everywhere; an unknown run is final only when no other daemon could
/// adopt it.
fn refusal(code: &str, failover: bool) -> Refusal {
    match code {
        protocol::codes::BAD_TOKEN => Refusal::Fatal,
        protocol::codes::JOB_NOT_FOUND if failover => Refusal::NextDaemon,
        protocol::codes::JOB_NOT_FOUND => Refusal::Fatal,
        _ => Refusal::Transient,
    }
}

fn handle(
    msg: DaemonMsg,
    shared: &Shared,
    cursor: &mut Cursor,
    log: &Log,
    failover: bool,
) -> Handled {
    match msg {
        DaemonMsg::Ack {
            ack_type: AckType::Connect,
            seq,
            window,
            ..
        } => {
            if let Some(w) = window {
                cursor.window = (w as usize).clamp(1, 1024);
            }
            // The daemon says what it has (the original daemon says nothing: send it all).
            let have = seq.unwrap_or(cursor.acked);
            cursor.resend_from(have + 1, shared);
            Handled::Continue
        }
        DaemonMsg::Ack {
            ack_type: AckType::Output,
            seq: Some(seq),
            ..
        } => {
            cursor.acknowledge(seq, shared);
            Handled::Continue
        }
        DaemonMsg::Ack {
            ack_type: AckType::Complete,
            ..
        } => Handled::Done,
        DaemonMsg::Ack { .. } => Handled::Continue,
        DaemonMsg::Nack { expected_seq, .. } => {
            cursor.resend_from(expected_seq, shared);
            Handled::Resend
        }
        DaemonMsg::SyncResponse { last_seq, .. } => {
            if last_seq >= 0 {
                cursor.acknowledge(last_seq, shared);
            }
            Handled::Continue
        }
        DaemonMsg::Kill { .. } => {
            log.normal("kill requested by the daemon");
            let _ = shared.events.send(Event::Kill);
            Handled::Continue
        }
        DaemonMsg::Error { code, message, .. } => {
            log.normal(&format!("the daemon refused this run ({code}): {message}"));
            match refusal(&code, failover) {
                Refusal::Fatal => {
                    let mut st = shared.state.lock().expect("state lock");
                    st.rejected = Some(format!("{code}: {message}"));
                    Handled::Done
                }
                Refusal::NextDaemon => Handled::Unknown(format!("{code}: {message}")),
                Refusal::Transient => Handled::Continue,
            }
        }
    }
}

/// How many leading bytes of `bytes` to send: all, unless that would split a UTF-8 character
/// that the next read completes (`at_end`: nothing more is coming, send everything).
fn utf8_boundary(bytes: &[u8], at_end: bool) -> usize {
    if at_end {
        return bytes.len();
    }
    let mut cut = bytes.len();
    // At most 3 continuation bytes can belong to an unfinished character.
    for back in 1..=3.min(bytes.len()) {
        let b = bytes[bytes.len() - back];
        if b & 0xc0 == 0x80 {
            continue;
        }
        // Bytes that cannot start a character (0x80.., 0xc0, 0xc1, 0xf5..) wait for nothing.
        let need = match b {
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => 1,
        };
        if need > back {
            cut = bytes.len() - back;
        }
        break;
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::{Attempt, Refusal, Rotation, refusal, utf8_boundary};
    use crate::protocol::codes;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `attempts` in order: (the URL index each was made at, the pause after it).
    fn drive(urls: usize, attempts: &[Attempt]) -> Vec<(usize, Duration)> {
        let mut r = Rotation::new(urls);
        attempts
            .iter()
            .map(|&a| {
                let at = r.current();
                (at, r.next(a))
            })
            .collect()
    }

    #[test]
    fn one_url_backs_off_as_it_always_did() {
        use Attempt::*;
        let got = drive(
            1,
            &[
                Unreachable,
                Unreachable,
                Unreachable,
                Unreachable,
                Unreachable,
                Unreachable,
                Unreachable,
                // A connection resets the backoff, whether or not the run was taken.
                Lost { accepted: false },
                Unreachable,
                Lost { accepted: true },
            ],
        );
        let pauses: Vec<Duration> = got.iter().map(|&(_, p)| p).collect();
        assert_eq!(
            pauses,
            [200, 400, 800, 1600, 3200, 5000, 5000, 200, 400, 200].map(|n| n * MS)
        );
        assert!(got.iter().all(|&(at, _)| at == 0));
    }

    #[test]
    fn a_dead_first_daemon_costs_one_connect_and_no_wait() {
        use Attempt::*;
        assert_eq!(
            drive(2, &[Unreachable, Unreachable, Unreachable, Unreachable]),
            [
                (0, Duration::ZERO),
                (1, 200 * MS),
                (0, Duration::ZERO),
                (1, 400 * MS)
            ]
        );
    }

    #[test]
    fn daemons_that_do_not_know_the_run_back_off_per_round_like_dead_ones() {
        use Attempt::*;
        // The owner (first URL) dies; the other daemon adopts the run only after a while.
        let mut attempts = vec![Lost { accepted: true }];
        for _ in 0..6 {
            attempts.extend([Unknown, Unreachable]);
        }
        attempts.push(Unknown);
        let mut expect = vec![(0, Duration::ZERO)];
        for n in [200, 400, 800, 1600, 3200, 5000] {
            expect.extend([(1, n * MS), (0, Duration::ZERO)]);
        }
        expect.push((1, 5000 * MS));
        // The other daemon is tried at once; each round of both then pauses once.
        assert_eq!(drive(2, &attempts), expect);
    }

    #[test]
    fn a_daemon_that_took_the_run_starts_a_new_round() {
        use Attempt::*;
        assert_eq!(
            drive(
                3,
                &[
                    Unreachable,
                    Unknown,
                    Lost { accepted: true },
                    Unknown,
                    Unreachable,
                    Unreachable,
                ]
            ),
            [
                (0, Duration::ZERO),
                (1, Duration::ZERO),
                // The third daemon took the run and lost it: the two before it do not count.
                (2, Duration::ZERO),
                (0, Duration::ZERO),
                (1, 200 * MS),
                (2, Duration::ZERO),
            ]
        );
    }

    #[test]
    fn an_unknown_run_is_final_only_with_one_daemon_and_a_bad_token_always() {
        assert_eq!(refusal(codes::JOB_NOT_FOUND, false), Refusal::Fatal);
        assert_eq!(refusal(codes::JOB_NOT_FOUND, true), Refusal::NextDaemon);
        assert_eq!(refusal(codes::BAD_TOKEN, false), Refusal::Fatal);
        assert_eq!(refusal(codes::BAD_TOKEN, true), Refusal::Fatal);
        for failover in [false, true] {
            assert_eq!(refusal(codes::NOT_A_TARGET, failover), Refusal::Transient);
            assert_eq!(refusal(codes::BAD_MESSAGE, failover), Refusal::Transient);
        }
    }

    #[test]
    fn never_splits_a_character_unless_at_the_end() {
        let s = "aé€😀".as_bytes();
        assert_eq!(utf8_boundary(s, false), s.len());
        assert_eq!(utf8_boundary(&s[..s.len() - 1], false), s.len() - 4);
        assert_eq!(utf8_boundary(&s[..2], false), 1);
        assert_eq!(utf8_boundary(&s[..2], true), 2);
        assert_eq!(
            utf8_boundary(b"\xff\xfe", false),
            2,
            "invalid bytes are sent (and shown)"
        );
    }
}
