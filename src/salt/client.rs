//! Publishing jobs to the Salt master's request server over ZeroMQ (the only file that knows
//! `zeromq`): one REQ socket, bounded connect and request timeouts, a fresh socket after any
//! error, and the master's key re-read (and the request retried once) after an
//! `AuthenticationError`, since the master rewrites its key at every start.

use std::path::PathBuf;
use std::time::Duration;

use zeromq::{ReqSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

use super::masterconf::SaltSettings;
use super::wire::{self, JidGen, Publish, PublishReply, WireError};

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A publish the master accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub jid: String,
    /// The minions expected to return.
    pub minions: Vec<String>,
    /// `list` targets that have no accepted key.
    pub missing: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot read the Salt master's key {}: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to the Salt master at {endpoint} within {timeout:?}: {reason}")]
    Connect {
        endpoint: String,
        timeout: Duration,
        reason: String,
    },
    #[error("the Salt master at {endpoint} did not answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("lost the connection to the Salt master at {endpoint}: {reason}")]
    Transport { endpoint: String, reason: String },
    #[error("the Salt master refused the key in {} ({message}), even after re-reading it", path.display())]
    Authentication { path: PathBuf, message: String },
    #[error("not authorized to publish: {message}")]
    Authorization { message: String },
    #[error("no minion matched: {message}")]
    NoMinions { message: String },
    #[error("the Salt master rejected the request: {message}")]
    BadLoad { message: String },
    #[error("the Salt master answered with an error: {message}")]
    Master { message: String },
    #[error(
        "the Salt master's settings could not be read: {reason} (see saltpeter_config.salt_master_config)"
    )]
    Unconfigured { reason: String },
    #[error("undecodable reply from the Salt master: {0}")]
    Decode(#[from] WireError),
}

impl PublishError {
    /// The request certainly never reached the master (no connection, no key, no settings);
    /// a timeout or a cut connection may have delivered it.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            PublishError::Connect { .. }
                | PublishError::Key { .. }
                | PublishError::Unconfigured { .. }
        )
    }
}

/// A client of one master's request server.
pub struct SaltClient {
    settings: SaltSettings,
    key: Option<String>,
    socket: Option<ReqSocket>,
    jids: JidGen,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl SaltClient {
    pub fn new(settings: SaltSettings) -> SaltClient {
        SaltClient {
            settings,
            key: None,
            socket: None,
            jids: JidGen::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    pub fn settings(&self) -> &SaltSettings {
        &self.settings
    }

    /// A fresh jid, so a caller can register what it waits for before publishing.
    pub fn next_jid(&mut self) -> String {
        self.jids.next(crate::clock::now())
    }

    /// Publishes `p` (with a pre-generated jid if it has none).
    pub async fn publish(&mut self, p: &Publish) -> Result<Published, PublishError> {
        let mut p = p.clone();
        if p.jid.is_empty() {
            p.jid = self.next_jid();
        }
        let mut retried = false;
        loop {
            let key = self.key()?;
            let reply = self.request(wire::encode_publish(&p, &key)).await?;
            return match reply {
                PublishReply::Published {
                    jid,
                    minions,
                    missing,
                } => Ok(Published {
                    jid,
                    minions,
                    missing,
                }),
                PublishReply::AuthenticationError { .. } if !retried => {
                    // The master restarted and wrote a new key: read it again, once.
                    self.key = None;
                    retried = true;
                    continue;
                }
                PublishReply::AuthenticationError { message } => {
                    Err(PublishError::Authentication {
                        path: self.settings.key_file(),
                        message,
                    })
                }
                PublishReply::AuthorizationError { message } => {
                    Err(PublishError::Authorization { message })
                }
                PublishReply::NoMinions { message } => Err(PublishError::NoMinions { message }),
                PublishReply::BadLoad { message } => Err(PublishError::BadLoad { message }),
                PublishReply::Error { message } => Err(PublishError::Master { message }),
            };
        }
    }

    fn key(&mut self) -> Result<String, PublishError> {
        if let Some(key) = &self.key {
            return Ok(key.clone());
        }
        let path = self.settings.key_file();
        let key = std::fs::read_to_string(&path)
            .map_err(|source| PublishError::Key { path, source })?
            .trim()
            .to_string();
        self.key = Some(key.clone());
        Ok(key)
    }

    /// One request/reply. The socket is kept only after a complete exchange: a REQ socket
    /// that timed out is stuck, so any error drops it.
    async fn request(&mut self, body: Vec<u8>) -> Result<PublishReply, PublishError> {
        let endpoint = self.settings.request_endpoint();
        let mut socket = match self.socket.take() {
            Some(s) => s,
            None => self.connect(&endpoint).await?,
        };
        let timeout = self.request_timeout;
        let timed_out = || PublishError::Timeout {
            endpoint: endpoint.clone(),
            timeout,
        };
        let transport = |e: zeromq::ZmqError| PublishError::Transport {
            endpoint: endpoint.clone(),
            reason: e.to_string(),
        };
        tokio::time::timeout(timeout, socket.send(ZmqMessage::from(body)))
            .await
            .map_err(|_| timed_out())?
            .map_err(transport)?;
        let reply = tokio::time::timeout(timeout, socket.recv())
            .await
            .map_err(|_| timed_out())?
            .map_err(transport)?;
        let frame = reply.into_vec().pop().unwrap_or_default();
        let decoded = wire::decode_reply(&frame)?;
        self.socket = Some(socket);
        Ok(decoded)
    }

    async fn connect(&self, endpoint: &str) -> Result<ReqSocket, PublishError> {
        let mut options = SocketOptions::default();
        options.connect_timeout(self.connect_timeout);
        let mut socket = ReqSocket::with_options(options);
        let failed = |reason: String| PublishError::Connect {
            endpoint: endpoint.to_string(),
            timeout: self.connect_timeout,
            reason,
        };
        match tokio::time::timeout(self.connect_timeout, socket.connect(endpoint)).await {
            Ok(Ok(())) => Ok(socket),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed("timed out".into())),
        }
    }
}
