//! Simulated wrappers: each speaks the wrapper protocol as `sp-wrapper` does (connect and start
//! with the run token, heartbeats every 5 s, windowed output, `complete` once every output is
//! acknowledged) over one WebSocket on loopback, and times the daemon's acknowledgements.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use saltpeter::protocol::{self, AckType, DaemonMsg, Ext, Header, WrapperMsg};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::daemon::{Daemon, Identity};

/// `sp-wrapper`'s heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once: enough to connect 20,000 well inside the 15 s heartbeat
/// clock adopted targets start with, few enough not to overflow the listen backlog.
const CONNECTING: usize = 128;
/// Client sockets are spread over 127.0.0.1..=32 so no source address runs out of ports.
const SOURCES: usize = 32;
/// Each step (a connection, a wait for every ack after `stop`) is bounded by this.
const PATIENCE: Duration = Duration::from_secs(60);

/// How one wrapper behaves.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Bytes per output message; 0: heartbeats only.
    pub chunk: usize,
    /// Between outputs; zero: as fast as the window allows.
    pub every: Duration,
    /// Before the first output (spreads a fleet's sends over the second).
    pub offset: Duration,
    /// Between `stop` and `complete` (spreads a fleet's completions).
    pub complete_after: Duration,
}

/// Counters every wrapper of a run adds to.
#[derive(Default)]
pub struct Shared {
    /// Output-ack latencies are kept only for messages sent while this is set.
    pub measuring: AtomicBool,
    /// Output bytes the daemon acknowledged.
    pub acked_bytes: AtomicU64,
}

/// What one wrapper saw.
#[derive(Debug, Default)]
pub struct Report {
    pub output_acks: Vec<Duration>,
    pub complete_sent: Option<Instant>,
    /// From sending `complete` to its ack (sent once the result is committed).
    pub complete_ack: Option<Duration>,
    /// The daemon asked it to kill its job (it then completes with 143, as `sp-wrapper`).
    pub killed: bool,
    pub error: Option<String>,
}

/// A fleet of connected wrappers driving themselves until `stop`.
pub struct Fleet {
    pub tasks: Vec<JoinHandle<Report>>,
    /// From the first connection attempt to the last `ack connect`.
    pub connected_in: Duration,
    pub failed: Vec<String>,
}

impl Fleet {
    /// Connects a wrapper for each of the daemon's machines (`plan(i)` says how the i-th
    /// behaves) and returns once all are connected or have failed.
    pub async fn connect(
        daemon: &Daemon,
        plan: impl Fn(usize) -> Plan,
        shared: &Arc<Shared>,
        stop: &watch::Receiver<bool>,
    ) -> Fleet {
        let gate = Arc::new(Semaphore::new(CONNECTING));
        let (ready_tx, mut ready) = mpsc::unbounded_channel::<Result<(), String>>();
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(daemon.machines.len());
        for (i, machine) in daemon.machines.iter().enumerate() {
            let (gate, ready_tx, shared, stop) =
                (gate.clone(), ready_tx.clone(), shared.clone(), stop.clone());
            let (hub, id, machine, plan) = (
                daemon.hub,
                daemon.identity.clone(),
                machine.clone(),
                plan(i),
            );
            let source = Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCES) as u8);
            tasks.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await.unwrap();
                let conn = Wrapper::connect(hub, source, &id, &machine, i).await;
                drop(permit);
                // Dropped once said, so the count below ends even if a task dies.
                let _ = ready_tx.send(
                    conn.as_ref()
                        .map(|_| ())
                        .map_err(|e| format!("{machine}: {e}")),
                );
                drop(ready_tx);
                match conn {
                    Ok(w) => w.drive(plan, &shared, stop).await,
                    Err(e) => Report {
                        error: Some(e),
                        ..Report::default()
                    },
                }
            }));
        }
        drop(ready_tx);
        let (mut failed, mut answered) = (Vec::new(), 0);
        let deadline = tokio::time::Instant::now() + 5 * PATIENCE;
        while answered < tasks.len() {
            match tokio::time::timeout_at(deadline, ready.recv()).await {
                Ok(Some(r)) => {
                    answered += 1;
                    failed.extend(r.err());
                }
                Ok(None) => break,
                Err(_) => {
                    failed.push(format!(
                        "{} wrappers not connected within {:?}",
                        tasks.len() - answered,
                        5 * PATIENCE
                    ));
                    break;
                }
            }
        }
        Fleet {
            tasks,
            connected_in: started.elapsed(),
            failed,
        }
    }

    /// Every wrapper's report once it completed, failed or ran out of time.
    pub async fn reports(self) -> Vec<Report> {
        let deadline = tokio::time::Instant::now() + 2 * PATIENCE;
        let mut out = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            let abort = task.abort_handle();
            out.push(match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Report {
                    error: Some(format!("wrapper task failed: {e}")),
                    ..Report::default()
                },
                Err(_) => {
                    abort.abort();
                    Report {
                        error: Some("still running at the deadline".into()),
                        ..Report::default()
                    }
                }
            });
        }
        out
    }
}

/// Waits until `at`, or not at all when outputs are sent as fast as the window allows.
async fn output_due(at: tokio::time::Instant, every: Duration) {
    if !every.is_zero() {
        tokio::time::sleep_until(at).await;
    }
}

/// `lines` of 64 bytes, like a chatty job's output, `bytes` long in all.
pub fn text(bytes: usize) -> String {
    let line = format!("{}\n", "x".repeat(63));
    line.repeat(bytes.div_ceil(64))[..bytes].to_string()
}

struct Wrapper {
    ws: WebSocketStream<TcpStream>,
    header: Header,
    ext: Ext,
    /// Outputs that may be unacknowledged at once (from `ack connect`).
    window: usize,
}

impl Wrapper {
    /// Opens a connection from `source`, says who it is (`connect`, `start`) and waits for the
    /// connect ack and its window.
    async fn connect(
        hub: SocketAddr,
        source: Ipv4Addr,
        id: &Identity,
        machine: &str,
        pid: usize,
    ) -> Result<Wrapper, String> {
        let open = async {
            let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
            socket
                .bind(SocketAddr::from((source, 0)))
                .map_err(|e| format!("bind {source}: {e}"))?;
            let stream = socket.connect(hub).await.map_err(|e| e.to_string())?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            // Small buffers, as the hub's: 20,000 of these live in this process.
            let config = WebSocketConfig::default()
                .read_buffer_size(4 * 1024)
                .write_buffer_size(0);
            let (ws, _) = tokio_tungstenite::client_async_with_config(
                format!("ws://{hub}/"),
                stream,
                Some(config),
            )
            .await
            .map_err(|e| e.to_string())?;
            let mut w = Wrapper {
                ws,
                header: Header {
                    job_name: id.job.clone(),
                    job_instance: id.instance.clone(),
                    machine: machine.into(),
                    timestamp: None,
                },
                ext: Ext {
                    protocol: Some(protocol::PROTOCOL_VERSION),
                    token: Some(id.token.clone()),
                },
                window: 1,
            };
            let (header, ext) = (w.header(), w.ext.clone());
            w.send(WrapperMsg::Connect {
                header,
                ext,
                resume: None,
            })
            .await?;
            let (header, ext) = (w.header(), w.ext.clone());
            w.send(WrapperMsg::Start {
                header,
                pid: 10_000 + pid as i64,
                version: "bench".into(),
                ext,
            })
            .await?;
            loop {
                match w.recv().await? {
                    DaemonMsg::Ack {
                        ack_type: AckType::Connect,
                        window,
                        ..
                    } => {
                        w.window = window.unwrap_or(1).max(1) as usize;
                        return Ok(w);
                    }
                    DaemonMsg::Error { code, message, .. } => {
                        return Err(format!("{code}: {message}"));
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(PATIENCE, open)
            .await
            .map_err(|_| format!("not connected within {PATIENCE:?}"))?
    }

    /// Stamped now, as `sp-wrapper` stamps every message.
    fn header(&self) -> Header {
        Header {
            timestamp: Some(protocol::timestamp_now()),
            ..self.header.clone()
        }
    }

    async fn send(&mut self, m: WrapperMsg) -> Result<(), String> {
        self.ws
            .send(Message::text(m.encode()))
            .await
            .map_err(|e| format!("send: {e}"))
    }

    async fn recv(&mut self) -> Result<DaemonMsg, String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return DaemonMsg::decode(&t).map_err(|e| e.to_string());
                }
                Some(Ok(Message::Close(_))) | None => return Err("closed by the daemon".into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
    }

    /// Heartbeats and outputs per `plan` until `stop`, then `complete` (exit 0) once every
    /// output is acknowledged, until its ack.
    async fn drive(
        mut self,
        plan: Plan,
        shared: &Shared,
        mut stop: watch::Receiver<bool>,
    ) -> Report {
        let mut report = Report::default();
        let data = text(plan.chunk);
        // Unacknowledged outputs in order: seq, sent at, whether it is measured.
        let mut in_flight: VecDeque<(i64, Instant, bool)> = VecDeque::new();
        let mut next_seq = 0i64;
        let start = tokio::time::Instant::now();
        let mut beat = tokio::time::interval_at(start + HEARTBEAT, HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_output = start + plan.offset;
        // After `stop`: when to send `complete`, and when to give up.
        let mut complete_at: Option<tokio::time::Instant> = None;
        let mut give_up = start + Duration::from_secs(365 * 86_400);
        let error = loop {
            let may_output =
                plan.chunk > 0 && complete_at.is_none() && in_flight.len() < self.window;
            let complete_due =
                complete_at.filter(|_| report.complete_sent.is_none() && in_flight.is_empty());
            tokio::select! {
                // Acks first: they free the window.
                biased;
                m = self.recv() => match m {
                    Ok(DaemonMsg::Ack { ack_type: AckType::Output, seq: Some(seq), .. }) => {
                        while let Some(&(s, at, measured)) = in_flight.front().filter(|f| f.0 <= seq) {
                            in_flight.pop_front();
                            if s == seq && measured {
                                report.output_acks.push(at.elapsed());
                            }
                            shared.acked_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Ok(DaemonMsg::Ack { ack_type: AckType::Complete, .. }) => {
                        if let Some(sent) = report.complete_sent {
                            report.complete_ack = Some(sent.elapsed());
                            break None;
                        }
                    }
                    Ok(DaemonMsg::Ack { .. }) => {}
                    // The job is killed: no more output, `complete` with 143 once all is acked.
                    Ok(DaemonMsg::Kill { .. }) => {
                        report.killed = true;
                        if complete_at.is_none() {
                            complete_at = Some(tokio::time::Instant::now());
                            give_up = tokio::time::Instant::now() + PATIENCE;
                        }
                    }
                    Ok(other) => break Some(format!("unexpected from the daemon: {other:?}")),
                    Err(e) => break Some(e),
                },
                _ = stop.changed(), if complete_at.is_none() => {
                    complete_at = Some(tokio::time::Instant::now() + plan.complete_after);
                    give_up = tokio::time::Instant::now() + plan.complete_after + PATIENCE;
                }
                _ = tokio::time::sleep_until(complete_due.unwrap_or(give_up)), if complete_due.is_some() => {
                    let (header, ext) = (self.header(), self.ext.clone());
                    let retcode = if report.killed { 143 } else { 0 };
                    let m = WrapperMsg::Complete { header, retcode, seq: Some(next_seq), ext };
                    report.complete_sent = Some(Instant::now());
                    if let Err(e) = self.send(m).await {
                        break Some(e);
                    }
                }
                // Flat out means no timer at all: tokio's sleeps round up to the next
                // millisecond, which alone would cap one wrapper at a message per ms.
                _ = output_due(next_output, plan.every), if may_output => {
                    let measured = shared.measuring.load(Ordering::Relaxed);
                    in_flight.push_back((next_seq, Instant::now(), measured));
                    let (header, ext) = (self.header(), self.ext.clone());
                    let m = WrapperMsg::Output { header, stream: "stdout".into(), data: data.clone(), seq: next_seq, ext };
                    next_seq += 1;
                    next_output = if plan.every.is_zero() { tokio::time::Instant::now() } else { next_output + plan.every };
                    if let Err(e) = self.send(m).await {
                        break Some(e);
                    }
                }
                _ = beat.tick() => {
                    let (header, ext) = (self.header(), self.ext.clone());
                    if let Err(e) = self.send(WrapperMsg::Heartbeat { header, ext }).await {
                        break Some(e);
                    }
                }
                _ = tokio::time::sleep_until(give_up) => {
                    break Some(format!("no ack of every output and of complete within {PATIENCE:?}"));
                }
            }
        };
        report.error = error;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
        report
    }
}
