//! Runs one job end to end on the master: subscribe first, publish, then gather returns from
//! the event bus (probing silent minions, recovering returns missed while the bus was down
//! from the job cache) until every expected minion has returned or been given up on.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::bus::BusMessage;
use super::client::{PublishError, Published, SaltClient};
use super::gather::{Gather, GatherAction, MinionState};
use super::jobcache;
use super::wire::{JobRet, Publish};

/// What happens while a job is gathered, for a caller to show as it comes.
#[derive(Debug)]
pub enum Progress<'a> {
    Published(&'a Published),
    /// A return, from the bus or (`recovered`) from the job cache after a reconnect.
    Returned {
        ret: &'a JobRet,
        recovered: bool,
    },
    Probing(&'a [String]),
    BusDown(&'a str),
    BusUp,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("the event bus subscription ended")]
    BusClosed,
    #[error("cannot subscribe to the Salt master's event bus within {0:?}: {1}")]
    BusUnavailable(Duration, String),
}

/// Waits until the bus subscription is connected (it must be, before publishing: returns can
/// arrive before the publish reply).
pub async fn wait_connected(
    bus: &mut mpsc::Receiver<BusMessage>,
    within: Duration,
) -> Result<(), JobError> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no answer");
    loop {
        match tokio::time::timeout_at(deadline, bus.recv()).await {
            Ok(Some(BusMessage::Connected(_))) => return Ok(()),
            Ok(Some(BusMessage::Disconnected { reason, .. })) => last = reason,
            Ok(Some(_)) => {}
            Ok(None) => return Err(JobError::BusClosed),
            Err(_) => return Err(JobError::BusUnavailable(within, last)),
        }
    }
}

/// Publishes and gathers. `bus` must already be connected ([`wait_connected`]).
pub async fn run(
    client: &mut SaltClient,
    bus: &mut mpsc::Receiver<BusMessage>,
    publish: Publish,
    timeout: Duration,
    gather_timeout: Duration,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Gather, JobError> {
    let origin = Instant::now();
    let now = || origin.elapsed();
    let published = client.publish(&publish).await?;
    progress(Progress::Published(&published));
    let mut gather = Gather::new(
        &published.jid,
        &published.minions,
        &published.missing,
        now(),
        timeout,
        gather_timeout,
    );
    // Probe jid -> the minions it asked.
    let mut probes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut bus_down = false;
    while !gather.is_done() {
        let deadline = gather.poll_timeout().map(|d| origin + d);
        let message = match deadline {
            Some(at) => match tokio::time::timeout_at(at, bus.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    gather.handle_timeout(now());
                    while let Some(action) = gather.poll_action() {
                        match action {
                            // Before giving up on anyone, take what the job cache has: a
                            // return whose event was lost is there.
                            GatherAction::CheckCache => recover(client, &mut gather, &mut progress),
                            GatherAction::GaveUp { .. } => {}
                            GatherAction::Probe(minions) => {
                                progress(Progress::Probing(&minions));
                                let mut probe = Publish::about_job(
                                    minions.clone(),
                                    "saltutil.find_job",
                                    &published.jid,
                                );
                                probe.user = publish.user.clone();
                                // A probe that cannot be published proves nothing about the
                                // minions.
                                match client.publish(&probe).await {
                                    Ok(p) => {
                                        gather.handle_probe_sent(&minions, &p.minions, now());
                                        probes.insert(p.jid, minions);
                                    }
                                    // Salt's own answer: it knows no such minion.
                                    Err(PublishError::NoMinions { message }) => {
                                        gather.handle_probe_refused(&minions, &message)
                                    }
                                    Err(e) => {
                                        gather.handle_probe_failed(&minions, &e.to_string(), now())
                                    }
                                }
                            }
                        }
                    }
                    continue;
                }
            },
            None => bus.recv().await,
        };
        match message.ok_or(JobError::BusClosed)? {
            BusMessage::Event(event) => {
                let Some(ret) = event.job_ret() else { continue };
                if ret.jid == published.jid {
                    if gather.handle_return(ret.clone()) {
                        progress(Progress::Returned {
                            ret: &ret,
                            recovered: false,
                        });
                    }
                } else if probes.get(&ret.jid).is_some_and(|m| m.contains(&ret.id)) {
                    gather.handle_probe_reply(&ret.id, ret.reports_running());
                }
            }
            BusMessage::Disconnected { reason, .. } => {
                if !bus_down {
                    progress(Progress::BusDown(&reason));
                }
                bus_down = true;
            }
            BusMessage::Connected(_) => {
                if bus_down {
                    progress(Progress::BusUp);
                    bus_down = false;
                    recover(client, &mut gather, &mut progress);
                }
            }
            BusMessage::BadFrame(_) | BusMessage::BadEvent(_) => {}
        }
    }
    Ok(gather)
}

/// Returns in the job cache that the bus did not deliver (it was disconnected, or the event
/// was lost).
fn recover(client: &SaltClient, gather: &mut Gather, progress: &mut impl FnMut(Progress<'_>)) {
    let s = client.settings();
    let Ok(cached) = jobcache::returns(&s.cachedir, &s.hash_type, gather.jid()) else {
        return;
    };
    for ret in cached {
        let known = matches!(
            gather.minions().get(&ret.id),
            Some(MinionState::Returned(_))
        );
        if !known && gather.handle_return(ret.clone()) {
            progress(Progress::Returned {
                ret: &ret,
                recovered: true,
            });
        }
    }
}
