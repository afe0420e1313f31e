//! Commands into the running daemon (run now, kill, maintenance, reload), each with a reply,
//! and the reasons one is refused. The daemon's loop carries them out one at a time, which is
//! what makes "two run-now clicks cannot both start" hold. Must not know: HTTP, SQLite.

use tokio::sync::{mpsc, oneshot};

/// A run, by instance id or by job (its running instance).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunRef {
    Instance(String),
    Job(String),
}

/// Maintenance switches; `machine: None` is the global switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaintenanceChange {
    pub machine: Option<String>,
    pub on: bool,
}

#[derive(Debug)]
pub enum Command {
    /// Start the job now; answers the new instance id.
    RunNow {
        job: String,
        reply: oneshot::Sender<Result<String, Refusal>>,
    },
    /// Kill a run, or one target of it; answers the instance.
    Kill {
        run: RunRef,
        machine: Option<String>,
        reply: oneshot::Sender<Result<String, Refusal>>,
    },
    Maintenance {
        change: MaintenanceChange,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    Reload {
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
}

/// Why a command was not carried out, in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no job named {0:?}")]
    UnknownJob(String),
    #[error("no run {0:?} is in flight")]
    NotRunning(String),
    #[error("{machine:?} is not a target of {instance}")]
    UnknownTarget { instance: String, machine: String },
    #[error("maintenance mode is on: {0} not started")]
    Maintenance(String),
    #[error("{running} is still running (concurrency: forbid)")]
    AlreadyRunning { running: String },
    #[error("{0}")]
    Failed(String),
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

/// A cheap handle that sends commands and awaits their replies.
#[derive(Clone, Debug)]
pub struct Control {
    tx: mpsc::Sender<Command>,
}

impl Control {
    pub fn new(capacity: usize) -> (Control, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Control { tx }, rx)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, Refusal>>) -> Command,
    ) -> Result<T, Refusal> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| Refusal::ShuttingDown)?;
        answer.await.map_err(|_| Refusal::ShuttingDown)?
    }

    pub async fn run_now(&self, job: &str) -> Result<String, Refusal> {
        let job = job.to_string();
        self.ask(|reply| Command::RunNow { job, reply }).await
    }

    pub async fn kill(&self, run: RunRef, machine: Option<String>) -> Result<String, Refusal> {
        self.ask(|reply| Command::Kill {
            run,
            machine,
            reply,
        })
        .await
    }

    pub async fn maintenance(&self, change: MaintenanceChange) -> Result<(), Refusal> {
        self.ask(|reply| Command::Maintenance { change, reply })
            .await
    }

    pub async fn reload(&self) -> Result<(), Refusal> {
        self.ask(|reply| Command::Reload { reply }).await
    }
}
