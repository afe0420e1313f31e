//! `sp-wrapper`, the agent Salt runs on each minion: it detaches at once (so Salt returns 0),
//! runs the job and streams it to the daemon (see `link`). Built without the daemon's
//! dependencies: std threads, `tungstenite`, `serde_json`, `nix`.
//!
//! Threads: the main thread owns the job (waits, enforces the timeout, kills); a reader copies
//! the job's output into the spool whatever the connection state; the link talks to the
//! daemon. They share the spool and a few flags.

pub mod child;
pub mod detach;
pub mod link;
pub mod log;
pub mod settings;
pub mod spool;
pub mod tls;

use std::io::Read;
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};

use self::log::Log;
use self::settings::Settings;
use self::spool::Spool;

/// How long a finished job's result is offered to an unreachable daemon.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(3600);
/// SIGTERM first; SIGKILL after this.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// After the shell exits, how long a background process may keep the output pipe open before
/// the wrapper stops reading it (so `daemon &` never hangs the wrapper).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// What the main thread waits for.
pub enum Event {
    Exited(std::process::ExitStatus),
    Kill,
}

pub struct State {
    pub spool: Spool,
    /// The shell's pid (0 when nothing was started, e.g. a lock conflict).
    pub pid: i64,
    /// No more output will come.
    pub input_done: bool,
    /// The run's exit code, once known.
    pub retcode: Option<i64>,
    /// The daemon refused the run (unknown run, bad token): why.
    pub rejected: Option<String>,
    /// After the job ended, how long the result may take to be delivered before the wrapper
    /// gives up (and leaves the output in its log).
    pub deliver_until: Option<Instant>,
}

pub struct Shared {
    pub state: Mutex<State>,
    pub events: mpsc::Sender<Event>,
}

/// Runs the job (after detaching) and returns when the daemon has its result, or has refused
/// the run. The process exit code does not matter to anyone: Salt returned long ago.
pub fn run(settings: Settings) -> i32 {
    let log = Log::open(&settings);
    log.normal(&format!(
        "starting job {} on {}",
        settings.job_instance, settings.machine
    ));
    log.debug(&format!("command: {}", settings.command));
    let spool = match Spool::create(&settings.spool_dir, settings.spool_max_bytes) {
        Ok(s) => s,
        Err(e) => {
            log.normal(&format!(
                "cannot create the spool in {}: {e}",
                settings.spool_dir.display()
            ));
            return 1;
        }
    };
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            spool,
            pid: 0,
            input_done: false,
            retcode: None,
            rejected: None,
            deliver_until: None,
        }),
        events: tx.clone(),
    });

    // The overlap guard, then the job: both before any thread exists (see `child::spawn`).
    let lock = match (!settings.allow_overlap)
        .then(|| lock(&settings))
        .transpose()
    {
        Ok(lock) => lock,
        Err(message) => {
            finish_without_job(
                &shared,
                &format!("LOCKFILE ERROR: {message}\n"),
                254,
                settings.delivery_timeout,
            );
            link::run(&settings, shared, &log);
            return 0;
        }
    };
    let job = match child::spawn(&settings) {
        Ok(job) => job,
        Err(e) => {
            log.normal(&format!("cannot start the job: {e}"));
            finish_without_job(
                &shared,
                &format!("[saltpeter: cannot start the job: {e}]\n"),
                255,
                settings.delivery_timeout,
            );
            link::run(&settings, shared, &log);
            return 0;
        }
    };
    let child::Job {
        mut child,
        pgid,
        output,
    } = job;
    shared.state.lock().expect("state lock").pid = i64::from(pgid.as_raw());
    let started = Instant::now();

    let reader = {
        let shared = shared.clone();
        std::thread::spawn(move || read_output(output, &shared))
    };
    {
        let events = tx.clone();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = events.send(Event::Exited(status));
            }
        });
    }
    let link = {
        let shared = shared.clone();
        let settings = settings.clone();
        std::thread::spawn(move || {
            let log = Log::open(&settings);
            link::run(&settings, shared, &log)
        })
    };

    // Wait for the job, a kill, or the timeout.
    let deadline = settings.timeout.map(|t| started + t);
    let mut notice = None;
    let wait = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let event = match wait {
        Some(w) => rx.recv_timeout(w).ok(),
        None => rx.recv().ok(),
    };
    let status = match event {
        Some(Event::Exited(status)) => Some(status),
        Some(Event::Kill) => {
            notice = Some(("[Job terminated by user request]".to_string(), 143));
            None
        }
        None => {
            let secs = settings.timeout.map_or(0, |t| t.as_secs());
            notice = Some((format!("[Job exceeded timeout of {secs} seconds]"), 124));
            None
        }
    };
    let code = match status {
        Some(status) => child::exit_code(status),
        None => {
            // SIGTERM to the whole group, a grace, then SIGKILL.
            let _ = killpg(pgid, Signal::SIGTERM);
            let exited = wait_exit(&rx, KILL_GRACE);
            let _ = killpg(pgid, Signal::SIGKILL);
            if !exited {
                wait_exit(&rx, Duration::from_secs(60));
            }
            notice.as_ref().map_or(255, |n| n.1)
        }
    };
    log.normal(&format!(
        "job ended with exit code {code} after {:.1}s",
        started.elapsed().as_secs_f64()
    ));

    // The rest of the output, unless a background process holds the pipe open.
    let drain_until = Instant::now() + DRAIN_AFTER_EXIT;
    while !reader.is_finished() && Instant::now() < drain_until {
        std::thread::sleep(Duration::from_millis(10));
    }
    {
        let mut st = shared.state.lock().expect("state lock");
        if let Some((text, _)) = &notice {
            let _ = st.spool.append(format!("\n{text}\n").as_bytes());
        }
        st.input_done = true;
        st.retcode = Some(code);
        st.deliver_until = Some(Instant::now() + settings.delivery_timeout);
    }
    // The job is over: the next run may start, whether or not this result is delivered yet.
    drop(lock);
    let _ = link.join();
    let mut st = shared.state.lock().expect("state lock");
    if let Some(why) = st.rejected.clone() {
        log.normal(&format!("result not delivered: {why}"));
        dump_output(&mut st, &log);
    } else {
        log.normal("result delivered");
    }
    0
}

fn wait_exit(rx: &mpsc::Receiver<Event>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Exited(_)) => return true,
            Ok(Event::Kill) => continue,
            Err(_) => return false,
        }
    }
}

/// The undelivered output, into the local log (as the original did), so it is not lost.
fn dump_output(st: &mut State, log: &Log) {
    let mut at = st.spool.unacknowledged();
    while at < st.spool.end() {
        let Ok(chunk) = st.spool.read(at, 64 * 1024) else {
            return;
        };
        if chunk.is_empty() {
            return;
        }
        at += chunk.len() as u64;
        log.normal(&format!(
            "undelivered output: {}",
            String::from_utf8_lossy(&chunk)
        ));
    }
}

fn finish_without_job(shared: &Shared, output: &str, code: i64, deliver_for: Duration) {
    let mut st = shared.state.lock().expect("state lock");
    let _ = st.spool.append(output.as_bytes());
    st.input_done = true;
    st.retcode = Some(code);
    st.deliver_until = Some(Instant::now() + deliver_for);
}

/// Copies the job's output into the spool until EOF, whatever the connection state.
fn read_output(mut output: std::fs::File, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Poll so the thread notices nothing: the main thread just stops waiting for it.
        let mut fds = [nix::poll::PollFd::new(
            output.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)).is_err() {
            continue;
        }
        match output.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut st = shared.state.lock().expect("state lock");
                if st.input_done {
                    return; // the run was wrapped up without us (a background holder)
                }
                if st.spool.append(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Takes the job's lock: an exclusive `flock`, held until the wrapper exits. Someone else
/// holding it is a conflict, reported with their pid.
fn lock(settings: &Settings) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    use std::io::{Seek, Write};
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = &settings.lockfile;
    if let Some(dir) = path.parent() {
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("cannot open lock file {}: {e}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut locked) => {
            let _ = locked.set_len(0);
            let _ = locked.rewind();
            let _ = writeln!(locked, "{}", std::process::id());
            Ok(locked)
        }
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(format!(
                "Job {} already running (PID {}), overlap not allowed",
                settings.job_name,
                pid.trim()
            ))
        }
    }
}
