//! A real `saltpeter run` holding one run of N confirmed targets without N Salt minions: the
//! run is written into the daemon's database as in flight before it starts, so the daemon
//! adopts it (as after a restart) and its wrappers may connect. Also the API reads the
//! benchmarks check results with.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use saltpeter::history::{History, Retention};
use saltpeter::journal::{RunEvent, Trigger};
use serde_json::Value;

use super::net::free_port;
use super::reaped::Reaped;

/// How long the daemon may take to adopt the run and open its API.
const STARTUP: Duration = Duration::from_secs(120);

/// Who the simulated wrappers speak for.
#[derive(Clone, Debug)]
pub struct Identity {
    pub job: String,
    pub instance: String,
    pub token: String,
}

pub struct Daemon {
    // Declared first so it is killed before the directory it uses is removed.
    child: Reaped,
    root: tempfile::TempDir,
    pub hub: SocketAddr,
    pub api: String,
    pub identity: Identity,
    pub machines: Vec<String>,
    /// From spawning the process to its API answering (the run adopted by then).
    pub startup: Duration,
}

impl Daemon {
    /// Seeds a run of `job` with `targets` confirmed machines (`m00001`, ...) and starts the
    /// daemon on it, returning once its API answers.
    pub async fn start(job: &str, targets: usize) -> Daemon {
        let root = tempfile::tempdir().unwrap();
        let secs = jiff::Timestamp::now().as_second();
        let identity = Identity {
            job: job.into(),
            instance: format!("{job}_{secs}"),
            token: format!("bench-token-{secs}"),
        };
        let machines: Vec<String> = (1..=targets).map(|i| format!("m{i:05}")).collect();
        let db = root.path().join("state/history.db");
        seed(&db, &identity, &machines).await;

        let (hub_port, api_port) = (free_port(), free_port());
        let conf = root.path().join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        // The job never fires (1 January 2099); `timeout: 0` so only heartbeats end a target.
        // The Salt master's config does not exist: the daemon runs without Salt.
        let text = format!(
            "saltpeter_config:\n  salt_master_config: {root}/no-salt-master\n  machines_ws_bind_addr: 127.0.0.1\n  machines_ws_port: {hub_port}\n  api_ws_bind_addr: 127.0.0.1\n  api_ws_port: {api_port}\n  logdir: {root}/log\n  database: {db}\n\
             {job}:\n  sec: 0\n  min: 0\n  hour: 0\n  dom: 1\n  mon: 1\n  dow: '*'\n  year: 2099\n  targets: 'm*'\n  command: 'true'\n  timeout: 0\n",
            root = root.path().display(),
            db = db.display(),
        );
        std::fs::write(conf.join("bench.yaml"), text).unwrap();
        let log = File::create(root.path().join("daemon.log")).unwrap();
        let started = Instant::now();
        let mut child = Reaped(
            Command::new(env!("CARGO_BIN_EXE_saltpeter"))
                .args(["run", "-c"])
                .arg(&conf)
                .env(
                    "SALTPETER_LOG",
                    std::env::var("FLEET_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start target/release/saltpeter"),
        );
        // The API is bound after every adopted run is registered with the hub.
        while TcpStream::connect(("127.0.0.1", api_port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the daemon exited ({status}):\n{}",
                    tail(&root.path().join("daemon.log"), 30)
                );
            }
            assert!(
                started.elapsed() < STARTUP,
                "the daemon's API never came up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Daemon {
            child,
            startup: started.elapsed(),
            root,
            hub: SocketAddr::from(([127, 0, 0, 1], hub_port)),
            api: format!("http://127.0.0.1:{api_port}"),
            identity,
            machines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kib(&self) -> u64 {
        super::rss_kib(self.pid())
    }

    pub fn cpu_seconds(&self) -> f64 {
        super::cpu_seconds(self.pid())
    }

    /// The last lines the daemon logged (for failure reports).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.root.path().join("daemon.log"), lines)
    }

    /// Polls `GET /api/v1/runs/<instance>` until the run has ended: when that was first seen
    /// and the run, or why not within `within`.
    pub async fn wait_ended(&self, within: Duration) -> Result<(Instant, Value), String> {
        let url = format!("{}/api/v1/runs/{}", self.api, self.identity.instance);
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into();
            let deadline = Instant::now() + within;
            loop {
                let last = match agent.get(&url).call() {
                    Ok(mut resp) => {
                        let status = resp.status().as_u16();
                        // 20,000 targets are megabytes of JSON: past ureq's default 10 MB cap.
                        let body = resp
                            .body_mut()
                            .with_config()
                            .limit(1 << 30)
                            .read_to_string()
                            .unwrap_or_default();
                        let seen = Instant::now();
                        match serde_json::from_str::<Value>(&body) {
                            Ok(run) if status == 200 && run["running"] == false => {
                                return Ok((seen, run));
                            }
                            _ => format!("HTTP {status}: {:.200}", body),
                        }
                    }
                    Err(e) => e.to_string(),
                };
                if Instant::now() > deadline {
                    return Err(format!("the run had not ended after {within:?} ({last})"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .await
        .unwrap()
    }
}

/// Every one of `expected` targets ended with `code`, else what did not.
pub fn all_ended_with(run: &Value, expected: usize, code: i64) -> Result<(), String> {
    let targets = run["targets"].as_array().map_or(&[][..], |t| t.as_slice());
    let failed: Vec<String> = targets
        .iter()
        .filter(|t| t["exit_code"] != code)
        .map(|t| format!("{}={}", t["machine"], t["exit_code"]))
        .collect();
    match (targets.len() == expected, failed.is_empty()) {
        (true, true) => Ok(()),
        _ => Err(format!(
            "{} targets of {expected}, not exit {code}: {} (e.g. {})",
            targets.len(),
            failed.len(),
            failed
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Records a run in flight as the coordinator would have before a `kill -9`: started,
/// published to `machines`, each of them confirmed (its wrapper was running).
async fn seed(db: &Path, id: &Identity, machines: &[String]) {
    let history = History::open(db, Retention::default()).unwrap();
    let at = jiff::Timestamp::now();
    history.record(RunEvent::Started {
        instance: id.instance.clone(),
        job: id.job.clone(),
        trigger: Trigger::Manual,
        scheduled: None,
        at,
        token: id.token.clone(),
    });
    history.record(RunEvent::Published {
        instance: id.instance.clone(),
        jid: "20990101000000000000".into(),
        machines: machines.to_vec(),
    });
    for m in machines {
        history.record(RunEvent::Confirmed {
            instance: id.instance.clone(),
            machine: m.clone(),
            at,
        });
    }
    history.flush().await.unwrap();
    let in_flight = history.in_flight().await.unwrap();
    assert!(
        in_flight.len() == 1
            && in_flight[0].open.len() == machines.len()
            && in_flight[0].open.iter().all(|t| t.confirmed),
        "the seeded run is not in flight with every target confirmed"
    );
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
