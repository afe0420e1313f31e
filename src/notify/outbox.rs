//! The outbox's sender: takes pending deliveries from the store, sends each through its
//! channel off the async threads (a slow webhook or mail server delays only its own
//! delivery, never a run), and records every attempt — delivered, retried later with backoff,
//! or given up. It wakes on the store's commits that queued deliveries and on the next retry
//! time; an idle outbox costs nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::SendError;
use super::notice::Notice;
use crate::config::notify::{Channel, Channels};
use crate::history::outbox::{Attempt, Due};
use crate::history::{History, HistoryError, Notice as StoreNotice};
use crate::metrics::Metrics;

/// Sends at once at most; the rest wait in the store.
const PARALLEL: usize = 4;

/// Attempts of one delivery before it is given up (about five hours of backoff).
pub const MAX_ATTEMPTS: u32 = 12;

/// When to try again after `attempts` failed attempts, or `None` to give up.
pub fn backoff(attempts: u32) -> Option<Duration> {
    const STEPS: [u64; 8] = [10, 30, 60, 120, 300, 600, 1800, 3600];
    if attempts >= MAX_ATTEMPTS {
        return None;
    }
    let i = (attempts.max(1) - 1) as usize;
    Some(Duration::from_secs(STEPS[i.min(STEPS.len() - 1)]))
}

/// What one attempt's result means for the delivery (pure: the policy, tested alone).
pub fn judge(result: Result<(), SendError>, attempts_before: u32, now_ms: i64) -> Attempt {
    let attempts = attempts_before + 1;
    match result {
        Ok(()) => Attempt::Delivered,
        Err(e) if e.retryable() => match backoff(attempts) {
            Some(wait) => Attempt::Retry {
                error: e.to_string(),
                next_ms: now_ms + wait.as_millis() as i64,
            },
            None => Attempt::Failed {
                error: format!("{e} (gave up after {attempts} attempts)"),
            },
        },
        Err(e) => Attempt::Failed {
            error: e.to_string(),
        },
    }
}

/// Sends one delivery through its channel (blocking: run on a blocking thread).
pub fn send(channel: &Channel, id: i64, body: &str, now_unix: i64) -> Result<(), SendError> {
    match channel {
        Channel::Webhook(hook) => super::webhook::send(hook, id, body, now_unix),
        Channel::Smtp(smtp) => {
            let notice = Notice::from_json(body).map_err(|e| SendError::Body(e.to_string()))?;
            super::email::send(smtp, id, &notice)
        }
    }
}

/// Starts the sender; it ends when the store stops.
pub fn spawn(history: History, channels: watch::Receiver<Channels>, metrics: Metrics) {
    tokio::spawn(run(history, channels, metrics));
}

async fn run(history: History, channels: watch::Receiver<Channels>, metrics: Metrics) {
    // Subscribed before the first look, so nothing queued in between is missed.
    let mut commits = history.subscribe();
    let mut busy: HashSet<i64> = HashSet::new();
    let mut sends: JoinSet<(Due, Attempt)> = JoinSet::new();
    let mut look = true;
    let mut next_due: Option<tokio::time::Instant> = None;
    loop {
        if look && busy.len() < PARALLEL {
            look = false;
            let now_ms = crate::clock::now().as_millisecond();
            match history
                .due_deliveries(
                    now_ms,
                    PARALLEL - busy.len(),
                    busy.iter().copied().collect(),
                )
                .await
            {
                Ok((due, next)) => {
                    next_due = next.map(|at| {
                        tokio::time::Instant::now()
                            + Duration::from_millis(at.saturating_sub(now_ms).max(0) as u64)
                    });
                    for d in due {
                        busy.insert(d.id);
                        let channel = channels.borrow().get(&d.channel).cloned();
                        sends.spawn(attempt(d, channel, now_ms));
                    }
                }
                Err(HistoryError::Stopped) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "notifications: cannot read the outbox; trying again in 5 s");
                    next_due = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                }
            }
        }
        tokio::select! {
            notice = commits.next() => match notice {
                None => return,
                Some(StoreNotice::Commit(c)) => look |= c.deliveries_queued(),
                Some(StoreNotice::Missed) => look = true,
            },
            Some(done) = sends.join_next(), if !sends.is_empty() => {
                let Ok((due, outcome)) = done else {
                    tracing::error!("notifications: a send panicked; it is tried again later");
                    continue;
                };
                let label = match &outcome {
                    Attempt::Delivered => {
                        tracing::info!(job = %due.job, channel = %due.channel, delivery = due.id, "notification delivered");
                        "delivered"
                    }
                    Attempt::Retry { error, next_ms } => {
                        tracing::warn!(job = %due.job, channel = %due.channel, delivery = due.id, %error, retry_at = %crate::history::outbox::when(*next_ms), "notification not delivered; it is tried again");
                        "retried"
                    }
                    Attempt::Failed { error } => {
                        tracing::error!(job = %due.job, channel = %due.channel, delivery = due.id, %error, "notification not delivered; given up");
                        "failed"
                    }
                };
                metrics.notification(&due.channel, label);
                let now_ms = crate::clock::now().as_millisecond();
                // Recorded before it leaves `busy`: it is never fetched again as pending.
                loop {
                    match history.attempted(due.id, outcome.clone(), now_ms).await {
                        Ok(()) => break,
                        Err(HistoryError::Stopped) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "notifications: cannot record a delivery attempt; retrying in 1 s");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                busy.remove(&due.id);
                look = true;
            }
            () = sleep_until_opt(next_due) => {
                next_due = None;
                look = true;
            }
        }
    }
}

async fn attempt(due: Due, channel: Option<Arc<Channel>>, now_ms: i64) -> (Due, Attempt) {
    let Some(channel) = channel else {
        let error = format!("channel `{}` is not configured (any more)", due.channel);
        return (due, Attempt::Failed { error });
    };
    let (id, body) = (due.id, due.body.clone());
    let result = tokio::task::spawn_blocking(move || send(&channel, id, &body, now_ms / 1000))
        .await
        .unwrap_or_else(|e| Err(SendError::Body(format!("the send panicked: {e}"))));
    let outcome = judge(result, due.attempts, crate::clock::now().as_millisecond());
    (due, outcome)
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_gives_up() {
        let waits: Vec<u64> = (1..=MAX_ATTEMPTS)
            .map(|n| backoff(n).map_or(0, |d| d.as_secs()))
            .collect();
        assert_eq!(waits[..4], [10, 30, 60, 120]);
        assert_eq!(waits[MAX_ATTEMPTS as usize - 2], 3600);
        assert_eq!(
            waits[MAX_ATTEMPTS as usize - 1],
            0,
            "the last attempt is final"
        );
        let total: u64 = waits.iter().sum();
        assert!(
            (4 * 3600..6 * 3600).contains(&total),
            "{total} s of retries"
        );
    }

    #[test]
    fn an_attempt_is_delivered_retried_or_given_up() {
        assert_eq!(judge(Ok(()), 0, 1000), Attempt::Delivered);
        let retry = judge(Err(SendError::Timeout { secs: 10 }), 0, 1000);
        assert!(
            matches!(
                retry,
                Attempt::Retry {
                    next_ms: 11_000,
                    ..
                }
            ),
            "{retry:?}"
        );
        let last = judge(Err(SendError::Timeout { secs: 10 }), MAX_ATTEMPTS - 1, 1000);
        assert!(
            matches!(&last, Attempt::Failed { error } if error.contains("gave up after 12 attempts")),
            "{last:?}"
        );
        let permanent = judge(Err(SendError::Body("bad".into())), 0, 1000);
        assert!(matches!(permanent, Attempt::Failed { .. }));
    }
}
