//! The machines hub: the daemon's WebSocket server for wrappers (the only module that knows
//! `tokio-tungstenite`). One task per connection, one registry task owning all state; it binds
//! each connection to its (run, machine) on the first message of any kind, checks run tokens,
//! numbers and de-duplicates output across reconnects, delivers kills until the target ends,
//! and turns messages into typed [`HubEvent`]s. It decides nothing about results: the engine
//! does, and confirms each `complete` it recorded ([`HubCommand::ConfirmComplete`]) before the
//! wrapper gets its acknowledgement.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, info, warn};

use crate::protocol::{self, AckType, DaemonMsg, WrapperMsg, codes};

/// How many output messages a wrapper may have in flight unacknowledged.
pub const WINDOW: u32 = 64;
/// How often an undelivered kill is sent again.
pub const KILL_RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct HubOptions {
    /// Accept wrappers that send no run token (the original's Python wrappers).
    pub allow_legacy_wrappers: bool,
    /// Output bytes per second accepted from one connection; beyond it the hub stops reading
    /// (the wrapper spools).
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
            allow_legacy_wrappers: true,
            max_output_rate: 64 * 1024 * 1024,
            tls: None,
        }
    }
}

/// What the hub reports about one target of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct HubEvent {
    pub instance: String,
    pub machine: String,
    /// When the hub received it (monotonic).
    pub at: Instant,
    pub kind: HubEventKind,
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
        /// The targets; `None`: any machine (the run registers before Salt says which).
        machines: Option<Vec<String>>,
        token: Option<String>,
    },
    /// Ask the target's wrapper to kill the job; repeated until the target completes.
    Kill { instance: String, machine: String },
    /// The engine recorded this target's result: acknowledge `complete`.
    ConfirmComplete { instance: String, machine: String },
    /// The run is over: its wrappers get `JOB_NOT_FOUND` from now on.
    Unregister { instance: String },
}

/// The engine's handle on the hub.
#[derive(Clone)]
pub struct Hub {
    commands: mpsc::Sender<HubCommand>,
}

impl Hub {
    pub async fn send(&self, command: HubCommand) {
        let _ = self.commands.send(command).await;
    }
}

/// Serves wrappers on `listener` until the returned handle and every clone are dropped.
pub fn spawn(listener: TcpListener, options: HubOptions) -> (Hub, mpsc::Receiver<HubEvent>) {
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (event_tx, event_rx) = mpsc::channel(16 * 1024);
    let (in_tx, in_rx) = mpsc::channel(16 * 1024);
    let mut registry = Registry {
        options: options.clone(),
        runs: HashMap::new(),
        conns: HashMap::new(),
        events: event_tx,
    };
    for a in &options.adopted {
        let targets = a
            .targets
            .iter()
            .map(|(m, next_seq)| {
                let mut t = Target::new();
                t.next_seq = *next_seq;
                (m.clone(), t)
            })
            .collect();
        let run = Run {
            job_name: a.job_name.clone(),
            token: a.token.clone(),
            targets,
            open: false,
        };
        registry.runs.insert(a.instance.clone(), run);
    }
    tokio::spawn(registry.run(cmd_rx, in_rx));
    tokio::spawn(accept_loop(listener, in_tx, options));
    (Hub { commands: cmd_tx }, event_rx)
}

type ConnId = u64;

/// From connection tasks to the registry.
enum Inbound {
    Opened(ConnId, mpsc::Sender<Message>),
    Message(ConnId, WrapperMsg),
    /// A frame that was not a valid message: reply with an error.
    Bad(ConnId, String),
    Closed(ConnId),
}

async fn accept_loop(listener: TcpListener, inbound: mpsc::Sender<Inbound>, options: HubOptions) {
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
        tokio::spawn(async move {
            stream.set_nodelay(true).ok();
            let result = match tls {
                None => connection(id, stream, inbound.clone(), rate).await,
                Some(config) => {
                    match tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
                        Ok(tls_stream) => connection(id, tls_stream, inbound.clone(), rate).await,
                        Err(e) => Err(format!("TLS handshake failed: {e}")),
                    }
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "machines hub: connection ended");
            }
            let _ = inbound.send(Inbound::Closed(id)).await;
        });
    }
}

async fn connection<S>(
    id: ConnId,
    stream: S,
    inbound: mpsc::Sender<Inbound>,
    rate: u64,
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
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(256);
    inbound
        .send(Inbound::Opened(id, out_tx))
        .await
        .map_err(|e| e.to_string())?;
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    // A token bucket over output bytes: past the rate, stop reading for a while.
    let mut budget = rate as f64;
    let mut refilled = Instant::now();
    let result = loop {
        let Some(frame) = source.next().await else {
            break Ok(());
        };
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
            Ok(m) => Inbound::Message(id, m),
            Err(e) => Inbound::Bad(id, e.to_string()),
        };
        if let Inbound::Message(_, WrapperMsg::Output { data, .. }) = &message {
            let now = Instant::now();
            budget = (budget + now.duration_since(refilled).as_secs_f64() * rate as f64)
                .min(rate as f64);
            refilled = now;
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

struct Target {
    /// The next output seq to accept.
    next_seq: i64,
    conn: Option<ConnId>,
    started: bool,
    /// `Some(retcode)` once the wrapper sent `complete`.
    completed: Option<i64>,
    /// The engine recorded the result.
    confirmed: bool,
    kill: bool,
    last_kill: Option<Instant>,
}

struct Run {
    job_name: String,
    token: Option<String>,
    targets: HashMap<String, Target>,
    /// Any machine may join (targets are created on first sight).
    open: bool,
}

impl Target {
    fn new() -> Target {
        Target {
            next_seq: 0,
            conn: None,
            started: false,
            completed: None,
            confirmed: false,
            kill: false,
            last_kill: None,
        }
    }
}

struct Conn {
    out: mpsc::Sender<Message>,
    bound: Option<(String, String)>,
    protocol: u32,
}

struct Registry {
    options: HubOptions,
    runs: HashMap<String, Run>,
    conns: HashMap<ConnId, Conn>,
    events: mpsc::Sender<HubEvent>,
}

fn now_stamp() -> String {
    protocol::timestamp_from_unix_micros(crate::clock::now().as_microsecond())
}

impl Registry {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<HubCommand>,
        mut inbound: mpsc::Receiver<Inbound>,
    ) {
        let mut kill_tick = tokio::time::interval(KILL_RETRY);
        kill_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                c = commands.recv() => match c {
                    Some(c) => self.command(c),
                    None => return,
                },
                Some(m) = inbound.recv() => self.inbound(m).await,
                _ = kill_tick.tick() => self.retry_kills(),
            }
        }
    }

    fn send(&self, conn: ConnId, msg: &DaemonMsg) {
        if let Some(c) = self.conns.get(&conn) {
            // A wrapper that does not read its replies is not waited for.
            let _ = c.out.try_send(Message::text(msg.encode()));
        }
    }

    fn close(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.out.try_send(Message::Close(None));
        }
    }

    fn error(&mut self, conn: ConnId, code: &str, message: String, close: bool) {
        self.send(
            conn,
            &DaemonMsg::Error {
                code: code.into(),
                message,
                timestamp: now_stamp(),
            },
        );
        if close {
            self.close(conn);
        }
    }

    async fn emit(&self, instance: &str, machine: &str, kind: HubEventKind) {
        let event = HubEvent {
            instance: instance.into(),
            machine: machine.into(),
            at: Instant::now(),
            kind,
        };
        let _ = self.events.send(event).await;
    }

    fn command(&mut self, command: HubCommand) {
        match command {
            HubCommand::Register {
                instance,
                job_name,
                machines,
                token,
            } => {
                let open = machines.is_none();
                let targets = machines
                    .unwrap_or_default()
                    .into_iter()
                    .map(|m| (m, Target::new()))
                    .collect();
                self.runs.insert(
                    instance,
                    Run {
                        job_name,
                        token,
                        targets,
                        open,
                    },
                );
            }
            HubCommand::Kill { instance, machine } => {
                // In an open run the target may not have connected yet: keep the kill for
                // when it does.
                let target = self.runs.get_mut(&instance).and_then(|r| {
                    if r.open {
                        Some(r.targets.entry(machine).or_insert_with(Target::new))
                    } else {
                        r.targets.get_mut(&machine)
                    }
                });
                if let Some(t) = target {
                    t.kill = true;
                    t.last_kill = None;
                }
                self.retry_kills();
            }
            HubCommand::ConfirmComplete { instance, machine } => {
                let Some(t) = self
                    .runs
                    .get_mut(&instance)
                    .and_then(|r| r.targets.get_mut(&machine))
                else {
                    return;
                };
                t.confirmed = true;
                let (conn, seq) = (t.conn, t.next_seq);
                if let Some(conn) = conn {
                    self.send(
                        conn,
                        &DaemonMsg::Ack {
                            ack_type: AckType::Complete,
                            seq: Some(seq),
                            timestamp: now_stamp(),
                            protocol: None,
                            window: None,
                        },
                    );
                }
            }
            HubCommand::Unregister { instance } => {
                self.runs.remove(&instance);
            }
        }
    }

    fn retry_kills(&mut self) {
        let now = Instant::now();
        let mut sends = Vec::new();
        for (instance, run) in &mut self.runs {
            for (machine, t) in &mut run.targets {
                if !t.kill || t.completed.is_some() {
                    continue;
                }
                if t.last_kill
                    .is_some_and(|at| now.duration_since(at) < KILL_RETRY)
                {
                    continue;
                }
                if let Some(conn) = t.conn {
                    t.last_kill = Some(now);
                    let msg = DaemonMsg::Kill {
                        job_name: run.job_name.clone(),
                        job_instance: instance.clone(),
                        machine: machine.clone(),
                        timestamp: now_stamp(),
                    };
                    sends.push((conn, msg));
                }
            }
        }
        for (conn, msg) in sends {
            self.send(conn, &msg);
        }
    }

    async fn inbound(&mut self, m: Inbound) {
        match m {
            Inbound::Opened(id, out) => {
                self.conns.insert(
                    id,
                    Conn {
                        out,
                        bound: None,
                        protocol: 0,
                    },
                );
            }
            Inbound::Bad(id, why) => {
                warn!(conn = id, error = %why, "machines hub: bad message");
                self.error(id, codes::BAD_MESSAGE, why, false);
            }
            Inbound::Closed(id) => {
                let Some(conn) = self.conns.remove(&id) else {
                    return;
                };
                if let Some((instance, machine)) = conn.bound {
                    let current = self
                        .runs
                        .get_mut(&instance)
                        .and_then(|r| r.targets.get_mut(&machine))
                        .filter(|t| t.conn == Some(id));
                    if let Some(t) = current {
                        t.conn = None;
                        self.emit(&instance, &machine, HubEventKind::Disconnected)
                            .await;
                    }
                }
            }
            Inbound::Message(id, msg) => self.message(id, msg).await,
        }
    }

    async fn message(&mut self, id: ConnId, msg: WrapperMsg) {
        let header = msg.header().clone();
        let (instance, machine) = (header.job_instance.clone(), header.machine.clone());
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        // Bind on the first message of any kind; a connection speaks for one target only.
        match &conn.bound {
            None => conn.bound = Some((instance.clone(), machine.clone())),
            Some(b) if *b != (instance.clone(), machine.clone()) => {
                let why = format!("this connection belongs to {}:{}", b.0, b.1);
                self.error(id, codes::BAD_MESSAGE, why, false);
                return;
            }
            Some(_) => {}
        }
        if let Some(p) = msg.ext().and_then(|e| e.protocol) {
            conn.protocol = p;
        }
        let protocol = conn.protocol;
        let Some(run) = self.runs.get_mut(&instance) else {
            self.error(
                id,
                codes::JOB_NOT_FOUND,
                "Job no longer exists on server (stopped or restarted)".into(),
                true,
            );
            return;
        };
        // The run token: a wrong one is refused; none at all only from legacy wrappers.
        let token = msg.ext().and_then(|e| e.token.clone());
        if let Some(expected) = &run.token {
            let ok = match &token {
                Some(t) => t == expected,
                None => self.options.allow_legacy_wrappers,
            };
            if !ok {
                warn!(%instance, %machine, "machines hub: wrong or missing run token");
                self.error(
                    id,
                    codes::BAD_TOKEN,
                    "wrong or missing run token".into(),
                    true,
                );
                return;
            }
        }
        if run.open && !run.targets.contains_key(&machine) {
            run.targets.insert(machine.clone(), Target::new());
        }
        let Some(t) = run.targets.get_mut(&machine) else {
            let why = format!("{machine} is not a target of {instance}");
            self.error(id, codes::JOB_NOT_FOUND, why, true);
            return;
        };
        // The connection that spoke last is the target's current one (kills go there).
        let newly_bound = t.conn != Some(id);
        t.conn = Some(id);
        let ts = now_stamp();
        let ack = |ack_type, seq| DaemonMsg::Ack {
            ack_type,
            seq,
            timestamp: ts.clone(),
            protocol: None,
            window: None,
        };
        let mut replies = Vec::new();
        let mut event = None;
        let mut gap_event = None;
        match msg {
            WrapperMsg::Connect { resume, .. } => {
                // The wrapper had more acknowledged than this daemon stored (acknowledged in
                // the last moments before a crash): continue after it, and say so.
                if let Some(r) = resume
                    && r >= t.next_seq
                {
                    warn!(%instance, %machine, from = t.next_seq, to = r, "output acknowledged before a restart was not stored");
                    let gap = format!(
                        "\n[saltpeter: output messages {}..={r} were lost in a daemon restart]\n",
                        t.next_seq
                    );
                    t.next_seq = r + 1;
                    gap_event = Some(HubEventKind::Output { data: gap, seq: r });
                }
                replies.push(if protocol >= 1 {
                    DaemonMsg::Ack {
                        ack_type: AckType::Connect,
                        seq: Some(t.next_seq - 1).filter(|s| *s >= 0),
                        timestamp: ts.clone(),
                        protocol: Some(protocol::PROTOCOL_VERSION),
                        window: Some(WINDOW),
                    }
                } else {
                    ack(AckType::Connect, None)
                });
                t.last_kill = None;
                info!("WebSocket: Client connected - {instance}:{machine}");
                event = Some(HubEventKind::Connected { protocol });
            }
            WrapperMsg::Start { pid, version, .. } => {
                replies.push(ack(AckType::Start, None));
                if !t.started {
                    t.started = true;
                    info!("WebSocket: Job started - {instance}:{machine} (PID: {pid})");
                    event = Some(HubEventKind::Started { pid, version });
                }
            }
            WrapperMsg::Output { data, seq, .. } => {
                if seq == t.next_seq {
                    t.next_seq += 1;
                    replies.push(ack(AckType::Output, Some(seq)));
                    event = Some(HubEventKind::Output { data, seq });
                } else if seq < t.next_seq {
                    // Already have it (sent again after a reconnect): acknowledge only.
                    replies.push(ack(AckType::Output, Some(seq)));
                } else {
                    replies.push(DaemonMsg::Nack {
                        nack_type: "out_of_order".into(),
                        expected_seq: t.next_seq,
                        received_seq: seq,
                        timestamp: ts.clone(),
                    });
                }
            }
            WrapperMsg::Heartbeat { .. } => {
                debug!(
                    "WebSocket: Heartbeat from {instance}:{machine} at {}",
                    header.timestamp.as_deref().unwrap_or(&ts)
                );
                event = Some(HubEventKind::Heartbeat);
            }
            WrapperMsg::SyncRequest { .. } => {
                replies.push(DaemonMsg::SyncResponse {
                    last_seq: t.next_seq - 1,
                    timestamp: ts.clone(),
                });
            }
            WrapperMsg::Complete { retcode, .. } => {
                if t.confirmed {
                    // Recorded already (the ack was lost): acknowledge again.
                    replies.push(ack(AckType::Complete, Some(t.next_seq)));
                } else if t.completed.is_none() {
                    t.completed = Some(retcode);
                    info!("WebSocket: Job completed - {instance}:{machine} (exit code: {retcode})");
                    event = Some(HubEventKind::Completed { retcode });
                }
            }
            WrapperMsg::Error { error, .. } => event = Some(HubEventKind::WrapperError { error }),
            WrapperMsg::Killed { .. } => {}
        }
        for reply in &replies {
            self.send(id, reply);
        }
        if let Some(kind) = gap_event {
            self.emit(&instance, &machine, kind).await;
        }
        if let Some(kind) = event {
            self.emit(&instance, &machine, kind).await;
        }
        // A pending kill goes to a newly (re)connected wrapper at once.
        if newly_bound {
            self.retry_kills();
        }
    }
}
