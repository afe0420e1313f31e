//! Many publishes at once: a small pool of [`SaltClient`]s (one REQ socket each, as many as the
//! master has request workers), fed from one queue, so a burst of due jobs is published in
//! parallel while each request keeps its own reply. A request may ask to be retried while the
//! master cannot be reached (a restarting master must not fail a job); others are answered at
//! once, so a probe never waits behind a launch that is retrying.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tracing::warn;

use super::client::{PublishError, Published, SaltClient};
use super::masterconf::SaltSettings;
use super::wire::Publish;

/// One publish, with the caller's `tag` to match its reply.
#[derive(Debug)]
pub struct Request<T> {
    pub publish: Publish,
    pub tag: T,
    /// Keep retrying for this long while the master is unreachable.
    pub retry_unreachable_for: Option<Duration>,
}

#[derive(Debug)]
pub struct Reply<T> {
    pub tag: T,
    pub result: Result<Published, PublishError>,
}

/// The handle: submitting never waits.
pub struct Publisher<T> {
    tx: mpsc::UnboundedSender<Request<T>>,
}

impl<T> Clone for Publisher<T> {
    fn clone(&self) -> Self {
        Publisher {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static> Publisher<T> {
    /// `size` clients publish concurrently (the master's `worker_threads` is the useful
    /// maximum); replies go to `replies`. Without settings every request fails with `why`.
    pub fn spawn(
        settings: Result<SaltSettings, String>,
        size: usize,
        replies: mpsc::Sender<Reply<T>>,
    ) -> Publisher<T> {
        let (tx, rx) = mpsc::unbounded_channel::<Request<T>>();
        let queue = Arc::new(Mutex::new(rx));
        for _ in 0..size.max(1) {
            let client = settings.clone().map(SaltClient::new);
            tokio::spawn(worker(client, queue.clone(), replies.clone()));
        }
        Publisher { tx }
    }

    pub fn submit(&self, request: Request<T>) {
        let _ = self.tx.send(request);
    }
}

async fn worker<T>(
    mut client: Result<SaltClient, String>,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Request<T>>>>,
    replies: mpsc::Sender<Reply<T>>,
) {
    loop {
        // One waiter at a time takes the next request; the others are busy publishing.
        let Some(req) = queue.lock().await.recv().await else {
            return;
        };
        let result = match client.as_mut() {
            Err(why) => Err(PublishError::Unconfigured {
                reason: why.clone(),
            }),
            Ok(client) => publish(client, &req.publish, req.retry_unreachable_for).await,
        };
        let reply = Reply {
            tag: req.tag,
            result,
        };
        if replies.send(reply).await.is_err() {
            return;
        }
    }
}

async fn publish(
    client: &mut SaltClient,
    publish: &Publish,
    retry_for: Option<Duration>,
) -> Result<Published, PublishError> {
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        match client.publish(publish).await {
            Err(
                e @ (PublishError::Connect { .. }
                | PublishError::Timeout { .. }
                | PublishError::Transport { .. }),
            ) if retry_for.is_some_and(|limit| started.elapsed() < limit) => {
                warn!(jid = %publish.jid, error = %e, "Salt master unreachable; retrying the publish");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}
