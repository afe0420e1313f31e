//! The machines hub: the daemon's WebSocket server for wrappers (the only module that knows
//! `tokio-tungstenite`). This file is the thin async shell: a task per connection reads and
//! writes frames, and one task feeds the sans-IO [`Registry`] (`registry.rs`, which owns every
//! decision: binding connections to (run, machine), run tokens, output de-duplication across
//! reconnects, kills until the target ends) and carries out what it asks. It decides nothing
//! about results: the engine does, and confirms each `complete` it recorded
//! ([`HubCommand::ConfirmComplete`]) before the wrapper gets its acknowledgement.
//!
//! Commands from the daemon never wait (an unbounded channel: the daemon's loop must never
//! block on the hub while the hub waits for the daemon to take its events); events to the
//! daemon are bounded, so a daemon that falls behind slows the wrappers down (they spool).

pub mod registry;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, warn};

use self::registry::{ConnId, Output, Registry};
use crate::protocol::{self, WrapperMsg};

/// How many output messages a wrapper may have in flight unacknowledged.
pub const WINDOW: u32 = 64;
/// How long an ended run's targets that never completed are still heard, so a wrapper cut off
/// past its heartbeat deadline (its target ended 253) can still deliver its output and result,
/// which are recorded as a note rather than thrown away.
pub const LATE_RESULTS_FOR: Duration = Duration::from_secs(600);
/// How often an undelivered kill is sent again.
pub const KILL_RETRY: Duration = Duration::from_secs(1);
/// Output bytes per second accepted from one connection unless configured
/// (`machines_ws_max_output_rate`, whose default in `config` is the same).
pub const DEFAULT_MAX_OUTPUT_RATE: u64 = 128 * 1024 * 1024;
// One wrapper must be able to stream 100 MB a second.
const _: () = assert!(DEFAULT_MAX_OUTPUT_RATE >= 100_000_000);

#[derive(Clone, Debug)]
pub struct HubOptions {
    /// Output bytes per second accepted from one connection; beyond it the hub stops reading
    /// (the wrapper spools). At least 1 is used.
    pub max_output_rate: u64,
    /// Serve `wss://` with this certificate ([`server_tls`]).
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Runs in flight before a restart, registered before the first connection is accepted
    /// so their wrappers never hear `JOB_NOT_FOUND`.
    pub adopted: Vec<Adopted>,
}

/// A run taken over from before a restart.
#[derive(Clone, Debug)]
pub struct Adopted {
    pub instance: String,
    pub job_name: String,
    pub token: Option<String>,
    /// Wrappers that send no token are accepted (see [`HubCommand::Register`]).
    pub tokenless: bool,
    /// Each target without a result, and the output seq stored next.
    pub targets: Vec<(String, i64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("unusable certificate or key: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS server configuration from PEM files: the certificate chain and its private key.
pub fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<std::sync::Arc<rustls::ServerConfig>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read_err = |path: &std::path::Path, e: rustls_pki_types::pem::Error| TlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| read_err(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(cert, e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| read_err(key, e))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(std::sync::Arc::new(config))
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            adopted: Vec::new(),
            max_output_rate: DEFAULT_MAX_OUTPUT_RATE,
            tls: None,
        }
    }
}

/// Output bytes allowed between a connection's read and the daemon handing them to the store.
/// Past it, connections stop reading (wrappers spool), so the daemon's memory is bounded by
/// this and the store's queue, never by what jobs print.
pub const BYTES_IN_FLIGHT: usize = 16 << 20;

/// A share of [`BYTES_IN_FLIGHT`], held by an output event until it is dropped.
#[derive(Clone, Default)]
pub struct Held(Option<std::sync::Arc<tokio::sync::OwnedSemaphorePermit>>);

impl PartialEq for Held {
    /// Budget shares do not make events differ.
    fn eq(&self, _: &Held) -> bool {
        true
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.0.as_ref().map_or(0, |p| p.num_permits());
        write!(f, "Held({bytes})")
    }
}

/// What the hub reports about one target of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct HubEvent {
    pub instance: String,
    pub machine: String,
    /// When the hub read the frame it came from, before any queue (monotonic).
    pub at: Instant,
    pub kind: HubEventKind,
    /// The output budget its bytes take until the event is dropped.
    pub held: Held,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HubEventKind {
    Connected {
        protocol: u32,
    },
    /// The first `start` of this target (repeats after reconnects are not reported).
    Started {
        pid: i64,
        version: String,
    },
    /// New output, in order, never twice.
    Output {
        data: String,
        seq: i64,
    },
    Heartbeat,
    /// The wrapper's result; acknowledge it with [`HubCommand::ConfirmComplete`] once recorded.
    Completed {
        retcode: i64,
    },
    WrapperError {
        error: String,
    },
    Disconnected,
}

/// Commands from the engine.
#[derive(Debug)]
pub enum HubCommand {
    /// A run whose wrappers may connect.
    Register {
        instance: String,
        job_name: String,
        /// The machines known to be targets so far (Salt names the rest with [`HubCommand::Name`]).
        machines: Vec<String>,
        token: Option<String>,
        /// Accept wrappers that send no token (the original's Python wrapper, for a job that
        /// runs it, when `allow_legacy_wrappers` is on); a wrong token is refused regardless.
        tokenless: bool,
    },
    /// Salt named these machines as targets of the run (publish reply, returns); only named
    /// machines may speak for a run.
    Name {
        instance: String,
        machines: Vec<String>,
    },
    /// Ask the target's wrapper to kill the job; repeated until the target completes.
    Kill { instance: String, machine: String },
    /// The engine recorded this target's result: acknowledge `complete`.
    ConfirmComplete { instance: String, machine: String },
    /// The run is over: wrappers of targets that never completed are still heard for
    /// [`LATE_RESULTS_FOR`] (their late results become notes); then, and for every other
    /// target at once, its wrappers get `JOB_NOT_FOUND`.
    Unregister { instance: String },
    /// Take over a run another daemon owned (its lease ran out): as a run from before a
    /// restart, its wrappers resume at the stored output seq.
    Adopt(Adopted),
    /// Another daemon took this run over: forget it and close its wrappers' connections
    /// without a word, so they reconnect to a daemon that holds it.
    Release { instance: String },
}

/// The engine's handle on the hub.
#[derive(Clone)]
pub struct Hub {
    commands: mpsc::UnboundedSender<HubCommand>,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Hub {
    /// Wrapper connections open now, kept by the hub itself (exact whatever the runs do).
    pub fn open_connections(&self) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
        self.open.clone()
    }

    /// Hands the hub a command; never waits. A hub that stopped drops it.
    pub fn send_now(&self, command: HubCommand) {
        let _ = self.commands.send(command);
    }
}

/// Serves wrappers on `listener` until the returned handle and every clone are dropped.
pub fn spawn(listener: TcpListener, options: HubOptions) -> (Hub, mpsc::Receiver<HubEvent>) {
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    // Counted in messages; output bytes are bounded by BYTES_IN_FLIGHT on top.
    let (event_tx, event_rx) = mpsc::channel(4 * 1024);
    let (in_tx, in_rx) = mpsc::channel(4 * 1024);
    let mut registry = Registry::new();
    for run in &options.adopted {
        registry.adopt(run);
    }
    let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(drive(registry, cmd_rx, in_rx, event_tx, open.clone()));
    tokio::spawn(accept_loop(listener, in_tx, options));
    (
        Hub {
            commands: cmd_tx,
            open,
        },
        event_rx,
    )
}

/// What the registry task has for one connection to send, read by its writer. A queue that
/// allocates nothing while empty: a channel would hold a block of 32 messages (about 2 KiB) for
/// each of thousands of mostly idle wrappers.
struct Outbox {
    queue: std::sync::Mutex<VecDeque<Message>>,
    ready: tokio::sync::Notify,
}

/// Messages waiting for one connection past which more are dropped: a wrapper that does not
/// read its replies is not waited for.
const OUTBOX_LIMIT: usize = 256;

impl Outbox {
    fn new() -> Outbox {
        Outbox {
            queue: std::sync::Mutex::new(VecDeque::new()),
            ready: tokio::sync::Notify::new(),
        }
    }

    /// Queues `m` unless the queue is full (then it is dropped).
    fn push(&self, m: Message) {
        {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= OUTBOX_LIMIT {
                return;
            }
            q.push_back(m);
        }
        self.ready.notify_one();
    }

    /// The next message, waiting for one. A push between the check and the wait leaves a
    /// permit (`notify_one`), so no wake-up is lost.
    async fn next(&self) -> Message {
        loop {
            let next = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let m = q.pop_front();
                if q.is_empty() && q.capacity() > 8 {
                    // A burst is over: give its memory back.
                    q.shrink_to(0);
                }
                m
            };
            if let Some(m) = next {
                return m;
            }
            self.ready.notified().await;
        }
    }
}

/// From connection tasks to the registry task.
enum Inbound {
    Opened(ConnId, std::sync::Arc<Outbox>),
    /// A message, when its frame was read, and the output budget it holds.
    Message(ConnId, WrapperMsg, Instant, Held),
    /// A frame that was not a valid message: reply with an error.
    Bad(ConnId, String),
    /// The connection ended, and when.
    Closed(ConnId, Instant),
}

/// The registry task: feeds the registry its inputs with the clocks read here, and carries out
/// its outputs.
async fn drive(
    mut registry: Registry,
    mut commands: mpsc::UnboundedReceiver<HubCommand>,
    mut inbound: mpsc::Receiver<Inbound>,
    events: mpsc::Sender<HubEvent>,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut conns: HashMap<ConnId, std::sync::Arc<Outbox>> = HashMap::new();
    // The budget of the message being handled goes with the event it produces.
    let mut held = Held::default();
    loop {
        carry_out(&mut registry, &conns, &events, &mut held).await;
        let retry = registry.poll_timeout();
        tokio::select! {
            // What else has arrived goes in the same turn (up to DRAIN): taken one per turn,
            // this task would queue behind every ready connection task for each message, and a
            // burst (thousands of wrappers completing, their acknowledgements after one
            // commit) would wait there for long.
            c = commands.recv() => {
                let Some(c) = c else { return };
                registry.handle_command(c, Instant::now(), &now_stamp());
                for _ in 1..DRAIN {
                    carry_out(&mut registry, &conns, &events, &mut held).await;
                    let Ok(c) = commands.try_recv() else { break };
                    registry.handle_command(c, Instant::now(), &now_stamp());
                }
            },
            Some(m) = inbound.recv() => {
                handle_inbound(&mut registry, &mut conns, &open, m, &mut held);
                for _ in 1..DRAIN {
                    carry_out(&mut registry, &conns, &events, &mut held).await;
                    let Ok(m) = inbound.try_recv() else { break };
                    handle_inbound(&mut registry, &mut conns, &open, m, &mut held);
                }
            },
            () = sleep_until(retry) => registry.handle_timeout(Instant::now(), &now_stamp()),
        }
    }
}

/// Messages a task takes from its channel in one turn before it lets others run.
pub(crate) const DRAIN: usize = 1024;

/// Hands one message from a connection task to the registry.
fn handle_inbound(
    registry: &mut Registry,
    conns: &mut HashMap<ConnId, std::sync::Arc<Outbox>>,
    open: &std::sync::atomic::AtomicUsize,
    m: Inbound,
    held: &mut Held,
) {
    use std::sync::atomic::Ordering::Relaxed;
    match m {
        Inbound::Opened(id, out) => {
            conns.insert(id, out);
            open.store(conns.len(), Relaxed);
            registry.handle_opened(id);
        }
        Inbound::Message(id, msg, at, budget) => {
            *held = budget;
            registry.handle_message(id, msg, at, &now_stamp());
        }
        Inbound::Bad(id, why) => registry.handle_bad_frame(id, &why, &now_stamp()),
        Inbound::Closed(id, at) => {
            conns.remove(&id);
            open.store(conns.len(), Relaxed);
            registry.handle_closed(id, at);
        }
    }
}

/// Carries out what the registry asks, in order: replies to connections' outboxes, events to
/// the engine (waiting while its channel is full).
async fn carry_out(
    registry: &mut Registry,
    conns: &HashMap<ConnId, std::sync::Arc<Outbox>>,
    events: &mpsc::Sender<HubEvent>,
    held: &mut Held,
) {
    while let Some(output) = registry.poll_output() {
        match output {
            // A wrapper that does not read its replies is not waited for.
            Output::Send { conn, msg } => {
                if let Some(out) = conns.get(&conn) {
                    out.push(Message::text(msg.encode()));
                }
            }
            Output::Close { conn } => {
                if let Some(out) = conns.get(&conn) {
                    out.push(Message::Close(None));
                }
            }
            Output::Event(mut event) => {
                if matches!(event.kind, HubEventKind::Output { .. }) {
                    event.held = std::mem::take(held);
                }
                // Waiting only when the channel is full: `send` would also spend the task's
                // budget and yield every 128 events, which the drain is there to avoid.
                if let Err(mpsc::error::TrySendError::Full(event)) = events.try_send(event) {
                    let _ = events.send(event).await;
                }
            }
        }
    }
}

/// Sleeps until `deadline`; without one, forever.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The wall-clock time in the wire's shape, for what the hub sends.
fn now_stamp() -> String {
    protocol::timestamp_from_unix_micros(crate::clock::now().as_microsecond())
}

async fn accept_loop(listener: TcpListener, inbound: mpsc::Sender<Inbound>, options: HubOptions) {
    let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(BYTES_IN_FLIGHT));
    let mut next_id: ConnId = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, typically: wait a little rather than spin.
                warn!(error = %e, "machines hub: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        let inbound = inbound.clone();
        let rate = options.max_output_rate;
        let tls = options.tls.clone();
        let budget = budget.clone();
        tokio::spawn(serve(id, peer, stream, inbound, rate, tls, budget));
    }
}

/// One wrapper's connection from accept to close: the task a fleet holds thousands of, so the
/// handshakes (12 KiB of state inline, TLS's and the WebSocket's) are boxed and freed when done,
/// and the task keeps only what its read loop needs.
async fn serve(
    id: ConnId,
    peer: std::net::SocketAddr,
    stream: tokio::net::TcpStream,
    inbound: mpsc::Sender<Inbound>,
    rate: u64,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    budget: std::sync::Arc<tokio::sync::Semaphore>,
) {
    stream.set_nodelay(true).ok();
    let result = match tls {
        None => connection(id, stream, inbound.clone(), rate, budget).await,
        // Boxed: TLS state is kilobytes, and inline it would size every plain task too.
        Some(config) => {
            let inbound = inbound.clone();
            Box::pin(async move {
                let stream = tokio_rustls::TlsAcceptor::from(config)
                    .accept(stream)
                    .await
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                connection(id, stream, inbound, rate, budget).await
            })
            .await
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "machines hub: connection ended");
    }
    let _ = inbound.send(Inbound::Closed(id, Instant::now())).await;
}

async fn connection<S>(
    id: ConnId,
    stream: S,
    inbound: mpsc::Sender<Inbound>,
    rate: u64,
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Small buffers: a daemon holds thousands of mostly idle connections (they grow on demand).
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(protocol::MAX_MESSAGE_BYTES))
        .max_frame_size(Some(protocol::MAX_MESSAGE_BYTES));
    let ws = Box::pin(tokio_tungstenite::accept_async_with_config(
        stream,
        Some(config),
    ))
    .await
    .map_err(|e| e.to_string())?;
    let (mut sink, mut source) = ws.split();
    let outbox = std::sync::Arc::new(Outbox::new());
    inbound
        .send(Inbound::Opened(id, outbox.clone()))
        .await
        .map_err(|e| e.to_string())?;
    // Ends with a close it was asked to send, a failed send, or the connection (aborted).
    let writer = tokio::spawn(async move {
        loop {
            let m = outbox.next().await;
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    // A token bucket over output bytes: past the rate, stop reading for a while.
    let rate = rate.max(1);
    let mut budget = rate as f64;
    let mut refilled = Instant::now();
    let result = loop {
        let Some(frame) = source.next().await else {
            break Ok(());
        };
        // Events carry this, not when the registry got to them.
        let at = Instant::now();
        let text = match frame {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) => break Ok(()),
            Ok(Message::Binary(_)) => {
                let _ = inbound
                    .send(Inbound::Bad(
                        id,
                        "binary frames are not part of the protocol".into(),
                    ))
                    .await;
                continue;
            }
            Ok(_) => continue,
            Err(e) => break Err(e.to_string()),
        };
        let message = match WrapperMsg::decode(&text) {
            Ok(m) => {
                // Output waits for its share of the bytes in flight (reading stops meanwhile).
                let held = match &m {
                    WrapperMsg::Output { data, .. } => {
                        let n = data.len().clamp(1, BYTES_IN_FLIGHT) as u32;
                        match in_flight.clone().acquire_many_owned(n).await {
                            Ok(p) => Held(Some(std::sync::Arc::new(p))),
                            Err(_) => Held::default(),
                        }
                    }
                    _ => Held::default(),
                };
                Inbound::Message(id, m, at, held)
            }
            Err(e) => Inbound::Bad(id, e.to_string()),
        };
        if let Inbound::Message(_, WrapperMsg::Output { data, .. }, _, _) = &message {
            budget =
                (budget + at.duration_since(refilled).as_secs_f64() * rate as f64).min(rate as f64);
            refilled = at;
            budget -= data.len() as f64;
            if budget < 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(-budget / rate as f64)).await;
            }
        }
        if inbound.send(message).await.is_err() {
            break Ok(());
        }
    };
    writer.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of messages is taken in one turn of the registry task, not 128 a turn (tokio's
    /// budget) with every other ready task run between: 100 busy tasks stand in for a fleet's
    /// connection tasks, and how often they ran while 1,000 wrappers connected counts the turns.
    #[tokio::test]
    async fn a_burst_is_carried_out_in_few_turns_of_a_busy_runtime() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let n = 1_000;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (event_tx, mut events) = mpsc::channel(4 * 1024);
        let (in_tx, in_rx) = mpsc::channel(4 * 1024);
        let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let machines: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        cmd_tx
            .send(HubCommand::Register {
                instance: "r".into(),
                job_name: "j".into(),
                machines: machines.clone(),
                token: None,
                tokenless: true,
            })
            .unwrap();
        tokio::spawn(drive(Registry::new(), cmd_rx, in_rx, event_tx, open));
        let (polls, stop) = (
            std::sync::Arc::new(AtomicU64::new(0)),
            std::sync::Arc::new(AtomicBool::new(false)),
        );
        for _ in 0..100 {
            let (polls, stop) = (polls.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    polls.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            });
        }
        tokio::task::yield_now().await;
        for (id, machine) in machines.iter().enumerate() {
            let id = id as ConnId;
            in_tx
                .try_send(Inbound::Opened(id, std::sync::Arc::new(Outbox::new())))
                .unwrap();
            let connect = WrapperMsg::Connect {
                header: protocol::Header {
                    job_name: "j".into(),
                    job_instance: "r".into(),
                    machine: machine.clone(),
                    timestamp: None,
                },
                ext: protocol::Ext::default(),
                resume: None,
            };
            in_tx
                .try_send(Inbound::Message(
                    id,
                    connect,
                    Instant::now(),
                    Held::default(),
                ))
                .unwrap();
        }
        let before = polls.load(Ordering::Relaxed);
        let mut connected = 0;
        while connected < n {
            // `try_recv` takes no budget: this task's own turns stay few too.
            while let Ok(e) = events.try_recv() {
                connected += usize::from(matches!(e.kind, HubEventKind::Connected { .. }));
            }
            tokio::task::yield_now().await;
        }
        let turns = (polls.load(Ordering::Relaxed) - before) / 100;
        stop.store(true, Ordering::Relaxed);
        // 2,000 messages at 128 a turn would be 16 turns at least.
        assert!(turns <= 6, "{turns} turns of the runtime");
    }

    #[tokio::test]
    async fn the_open_connections_gauge_is_exact_after_the_run_is_gone() {
        use futures_util::{SinkExt, StreamExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let (hub, _events) = spawn(listener, HubOptions::default());
        hub.send_now(HubCommand::Register {
            instance: "gone".into(),
            job_name: "j".into(),
            machines: vec!["m1".into(), "m2".into()],
            token: None,
            tokenless: false,
        });
        let open = hub.open_connections();
        // Two wrappers of the run, each bound by its `connect` (acknowledged).
        let mut wrappers = Vec::new();
        for machine in ["m1", "m2"] {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .unwrap();
            let connect = WrapperMsg::Connect {
                header: protocol::Header {
                    job_name: "j".into(),
                    job_instance: "gone".into(),
                    machine: machine.into(),
                    timestamp: None,
                },
                ext: protocol::Ext::default(),
                resume: None,
            };
            ws.send(Message::text(connect.encode())).await.unwrap();
            let ack = ws.next().await.unwrap().unwrap();
            assert!(ack.to_text().unwrap().contains("ack"), "{ack:?}");
            wrappers.push(ws);
        }
        let seen = |n: usize| {
            let open = open.clone();
            async move {
                // Bounded: the hub's tasks run as soon as this one yields.
                for _ in 0..1_000 {
                    if open.load(std::sync::atomic::Ordering::Relaxed) == n {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                false
            }
        };
        assert!(seen(2).await);
        // The run is unregistered before its wrappers close: they still count down.
        hub.send_now(HubCommand::Unregister {
            instance: "gone".into(),
        });
        drop(wrappers.pop());
        assert!(seen(1).await);
        drop(wrappers.pop());
        assert!(seen(0).await);
    }

    /// A fleet holds one such task per wrapper: the handshakes' state (12.8 KiB of the task
    /// when it was inline) must not stay in it for the connection's life.
    #[tokio::test]
    async fn a_connection_task_holds_little_beyond_its_read_loop() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let (inbound, _rx) = mpsc::channel(1);
        let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let task = serve(1, peer, stream, inbound, 1, None, budget);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "a connection task is {size} bytes");
    }

    #[test]
    fn the_default_output_rate_is_the_configs() {
        let configured = crate::config::Settings::defaults("h").machines_ws_max_output_rate;
        assert_eq!(HubOptions::default().max_output_rate, configured);
        assert_eq!(DEFAULT_MAX_OUTPUT_RATE, configured);
    }
}
