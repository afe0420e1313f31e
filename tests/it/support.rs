//! Test helpers: temporary config dirs and the `saltpeter` binary as a child process whose
//! output lines are awaited with a deadline (an event, not a sleep).

#[path = "../common/net.rs"]
mod net;

pub use net::free_port;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_saltpeter"))
}

/// Runs `saltpeter ARGS`, returning (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().expect("run saltpeter");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn write(dir: &Path, name: &str, text: &str) {
    // Write then rename, as editors and config management do, so a reader never sees half.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A job firing on the given `sec` field, every minute of every day.
pub fn job(name: &str, sec: &str) -> String {
    format!(
        "{name}:\n  sec: '{sec}'\n  min: '*'\n  hour: '*'\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: '*'\n  command: 'true'\n  wrapper_path: /usr/local/bin/sp-wrapper\n"
    )
}

/// A running daemon whose stdout lines arrive on a channel.
pub struct Daemon {
    pub child: Child,
    /// The machines hub's port (a free one, set in `00-test.yaml`).
    pub hub_port: u16,
    /// The API's port (a free one, on loopback).
    pub api_port: u16,
    /// The database lives here, outside the watched config directory.
    pub state: tempfile::TempDir,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Daemon {
    pub fn start(dir: &Path) -> Daemon {
        Daemon::start_with(dir, "", tempfile::tempdir().unwrap())
    }

    /// With more `saltpeter_config` lines (indented by two spaces) and a given state directory
    /// (to restart on the same database).
    pub fn start_with(dir: &Path, settings: &str, state: tempfile::TempDir) -> Daemon {
        let database = state.path().join("history.db").display().to_string();
        Daemon::launch(
            dir,
            settings,
            state,
            [free_port(), free_port()],
            &database,
            &[],
        )
    }

    /// On a shared database (a `postgres://` URL), with more environment for the process.
    pub fn start_shared(
        dir: &Path,
        database: &str,
        settings: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let state = tempfile::tempdir().unwrap();
        Daemon::launch(
            dir,
            settings,
            state,
            [free_port(), free_port()],
            database,
            env,
        )
    }

    /// Kills this daemon with SIGKILL and starts another on the same ports and database.
    pub fn crash_and_restart(mut self, dir: &Path) -> Daemon {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let state = std::mem::replace(&mut self.state, tempfile::tempdir().unwrap());
        let database = state.path().join("history.db").display().to_string();
        Daemon::launch(
            dir,
            "",
            state,
            [self.hub_port, self.api_port],
            &database,
            &[],
        )
    }

    fn launch(
        dir: &Path,
        settings: &str,
        state: tempfile::TempDir,
        ports: [u16; 2],
        database: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let [hub_port, api_port] = ports;
        let ports = format!(
            "saltpeter_config:\n  machines_ws_bind_addr: 127.0.0.1\n  machines_ws_port: {hub_port}\n  api_ws_bind_addr: 127.0.0.1\n  api_ws_port: {api_port}\n  database: '{database}'\n{settings}"
        );
        write(dir, "00-test.yaml", &ports);
        let mut child = bin()
            .args(["run", "-c"])
            .arg(dir)
            .env("SALTPETER_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start daemon");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            hub_port,
            api_port,
            state,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`, failing after `within`.
    pub fn expect_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?} within {within:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Reads the rest of the daemon's output (after it exited) into `seen`.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
    }

    /// Reads what the daemon prints for `period` (it keeps running).
    pub fn drain_for(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
    }

    /// The API's base URL.
    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Waits until the API answers.
    pub fn wait_api(&mut self) {
        self.expect_line("API and web UI on", Duration::from_secs(30));
    }

    /// A request to the API: (status, JSON body or `Null`).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        http(method, &format!("{}{path}", self.api()), body, &[])
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP request; any status is an answer (not an error).
pub fn http(
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    // Mutations must show they come from a program, not a web page (the API's browser rules).
    if method != "GET" {
        req = req.header("x-saltpeter-request", "1");
    }
    let req = req.body(body.unwrap_or("").to_string()).unwrap();
    let mut resp = agent.run(req).expect("HTTP request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// A master config whose request port and event socket lead nowhere (or into `port`).
pub fn dead_master(dir: &Path, port: u16) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    std::fs::write(dir.join("cache/.root_key"), "not-a-real-key").unwrap();
    let master = dir.join("master");
    let text = format!(
        "interface: 127.0.0.1\nret_port: {port}\nsock_dir: {d}/sock\ncachedir: {d}/cache\n",
        d = dir.display()
    );
    std::fs::write(&master, text).unwrap();
    master
}

/// The processes started for job `job` (by `SP_JOB_NAME` in their environment): each pid, its
/// `comm` and its environment's variables.
pub fn job_processes(job: &str) -> Vec<(i32, String, Vec<String>)> {
    let wanted = format!("SP_JOB_NAME={job}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<String> = env
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        if vars.contains(&wanted) {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_string(), vars));
        }
    }
    found
}

/// SIGKILLs the processes of `job` that `pick` chooses by their `comm`.
pub fn kill_job_processes(job: &str, pick: impl Fn(&str) -> bool) {
    for (pid, comm, _) in job_processes(job) {
        if pick(&comm) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
