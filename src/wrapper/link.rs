//! The wrapper's side of the connection to the daemon: connect (and reconnect with backoff),
//! say who it is on every connection, stream the spool as numbered `output` messages with a
//! window of unacknowledged ones, heartbeat, resume after a reconnect from what the daemon
//! says it has, pass `kill` on, and deliver `complete` until the daemon acknowledges it.

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
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
    let mut backoff = Duration::from_millis(200);
    let mut connected_before = false;
    loop {
        if given_up(&shared) {
            return;
        }
        match connect(settings) {
            Ok(mut ws) => {
                if connected_before {
                    log.normal("reconnected to the daemon");
                }
                connected_before = true;
                backoff = Duration::from_millis(200);
                match session(settings, &shared, &mut ws, &mut cursor, log) {
                    SessionEnd::Done => return,
                    SessionEnd::Lost(why) => {
                        log.normal(&format!("connection to the daemon lost: {why}"))
                    }
                }
            }
            Err(why) => log.debug(&format!(
                "cannot connect to {}: {why}",
                settings.websocket_url
            )),
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn connect(settings: &Settings) -> Result<WebSocket<Conn>, String> {
    let secure = settings.websocket_url.starts_with("wss://");
    let rest = settings
        .websocket_url
        .trim_start_matches("wss://")
        .trim_start_matches("ws://");
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
        let (ws, _) = tungstenite::client(settings.websocket_url.as_str(), conn)
            .map_err(|e| e.to_string())?;
        ws.get_ref()
            .tcp()
            .set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(|e| e.to_string())?;
        return Ok(ws);
    }
    Err(last)
}

/// The job ended long ago and the daemon never took its result: stop trying.
fn given_up(shared: &Shared) -> bool {
    let mut st = shared.state.lock().expect("state lock");
    if st.deliver_until.is_some_and(|d| Instant::now() >= d) {
        st.rejected
            .get_or_insert_with(|| "the daemon did not acknowledge the result in time".into());
        return true;
    }
    false
}

enum SessionEnd {
    Done,
    Lost(String),
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
) -> SessionEnd {
    macro_rules! try_send {
        ($msg:expr) => {
            if let Err(e) = send(ws, &$msg) {
                return SessionEnd::Lost(e);
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
    let mut connect_acked = false;
    let mut last_heartbeat = Instant::now();
    let mut last_output = Instant::now();
    let mut complete_sent = false;
    loop {
        if given_up(shared) {
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
                    match handle(msg, shared, cursor, log) {
                        Handled::Continue => {}
                        Handled::Done => return SessionEnd::Done,
                        Handled::Resend => complete_sent = false,
                    }
                }
                Err(e) => log.normal(&format!("ignoring a message from the daemon: {e}")),
            },
            Ok(Message::Close(_)) => return SessionEnd::Lost("closed by the daemon".into()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return SessionEnd::Lost(e.to_string()),
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
                    Err(e) => return SessionEnd::Lost(format!("spool: {e}")),
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
                    Err(e) => return SessionEnd::Lost(format!("spool: {e}")),
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
}

fn handle(msg: DaemonMsg, shared: &Shared, cursor: &mut Cursor, log: &Log) -> Handled {
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
            if code == protocol::codes::JOB_NOT_FOUND || code == protocol::codes::BAD_TOKEN {
                let mut st = shared.state.lock().expect("state lock");
                st.rejected = Some(format!("{code}: {message}"));
                return Handled::Done;
            }
            Handled::Continue
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
    use super::utf8_boundary;

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
