//! Benchmark on a real Salt lab: BURST_JOBS (default 1,000) jobs due in the same second, run by
//! the real daemon; from the scheduled second to the last publish reply and to the last target
//! result, with the daemon's and the master's CPU per publish. Then the same publishes through
//! Salt's own LocalClient from one Python process (`benches/burst_localclient.py`), and the
//! floor: the master's CPU for those publishes spread over every core. Prints a markdown table.
//! Each phase starts on a settled lab: the previous phase's minion jobs ended, and a minion that
//! stopped answering `test.ping` (a burst can break a Salt 3007 minion) restarted.
//! Run with `cargo bench --bench burst`; BURST_PATIENCE (seconds, default 180) bounds each wait,
//! BURST_ONLY=ours|salt runs one phase, BURST_DAEMON_LOG=FILE keeps the daemon's log,
//! BURST_FRESH_LOGS=1 lets the daemon create every job's text log (a first-ever burst).

#[path = "../tests/common/net.rs"]
mod net;

use net::free_port;

#[path = "../tests/common/lab_env.rs"]
mod lab_env;

#[path = "../tests/common/reaped.rs"]
mod reaped;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use reaped::Reaped;

/// Seconds between writing the config and the burst: the daemon starts, and a quiet window
/// before the burst gives the master's background CPU rate.
const AHEAD: u64 = 20;
const QUIET_WINDOW: Duration = Duration::from_secs(5);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env_num = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|s| s.trim().replace('_', "").parse().ok())
            .unwrap_or(default)
    };
    let jobs = env_num("BURST_JOBS", 1000) as usize;
    let patience = Duration::from_secs(env_num("BURST_PATIENCE", 180));
    let env = lab_env::lab_env();
    let minions = env["MINIONS"].split_whitespace().count();
    let master_config = env["MASTER_CONFIG"].clone();
    let lab = Lab {
        master_pidfile: format!("{}/master/salt-master.pid", env["LAB_DIR"]),
        master_conf_dir: Path::new(&master_config)
            .parent()
            .unwrap()
            .display()
            .to_string(),
        lab_dir: env["LAB_DIR"].clone(),
        hz: clock_ticks(),
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());

    let only = std::env::var("BURST_ONLY").unwrap_or_default();
    let mut notes = settle(&env, &lab, patience, &HashSet::new(), None);
    // Minions lose jobs well after a phase's last publish: counted through the settling.
    let crashes = minion_crashes(&lab);
    let ours = if only != "salt" {
        let mut ours = run_daemon(&env, &lab, jobs, patience);
        // Salt's turn starts on quiet, healthy minions, as ours did.
        // The daemon stays up meanwhile: a wrapper that starts late is refused by its hub
        // (its run ended) and exits, instead of retrying a closed port for an hour.
        notes.extend(settle(&env, &lab, patience, &ours.jids, Some(ours.port)));
        drop(ours.daemon.take());
        drop(ours.dir.take());
        ours.minion_crashes = minion_crashes(&lab).saturating_sub(crashes);
        ours
    } else {
        Ours::default()
    };
    let theirs = if only != "ours" {
        let crashes = minion_crashes(&lab);
        let mut theirs = run_localclient(&env, &lab, jobs, minions, patience);
        notes.extend(settle(&env, &lab, patience, &theirs.jids, None));
        theirs.minion_crashes = minion_crashes(&lab).saturating_sub(crashes);
        theirs
    } else {
        Theirs::default()
    };

    // Report.
    let ms_per = |secs: f64, count: usize| 1e3 * secs / count.max(1) as f64;
    let opt_s = |v: Option<f64>| v.map_or("—".to_string(), |s| format!("{s:.2} s"));
    println!();
    println!(
        "Salt {} lab, {minions} minions, master worker_threads: {}, {cores} cores; {jobs} jobs \
         of `true` to '*' ({} target results expected per phase)",
        env["SALT_VERSION"],
        worker_threads(&master_config),
        jobs * minions
    );
    println!(
        "master background CPU before the burst: {:.1} ms/s (other work on the lab counts below too)",
        1e3 * ours.master_background
    );
    println!();
    println!(
        "| | to last publish reply | to last result | client CPU / publish | master CPU / publish | minions' CPU / publish |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| ours (`saltpeter run`, from the scheduled second) | {} | {} ({} of {} not 0) | {:.2} ms ({:.2} ms to last result) | {:.2} ms ({:.2} ms to last result) | {:.2} ms |",
        opt_s(ours.to_last_reply),
        opt_s(ours.to_last_result),
        ours.not_zero.values().sum::<usize>(),
        ours.results,
        ms_per(ours.daemon_cpu_publish, jobs),
        ms_per(ours.daemon_cpu_all, jobs),
        ms_per(ours.master_cpu_publish, jobs),
        ms_per(ours.master_cpu_all, jobs),
        ms_per(ours.minions_cpu_publish, jobs),
    );
    println!(
        "| Salt's LocalClient (one Python process, from the first call) | {} | {} (return on the bus) | {:.2} ms | {:.2} ms ({:.2} ms to last return) | {:.2} ms |",
        opt_s(theirs.to_last_publish),
        opt_s(theirs.to_last_return),
        ms_per(theirs.client_cpu, jobs),
        ms_per(theirs.master_cpu_publish, jobs),
        ms_per(theirs.master_cpu_all, jobs),
        ms_per(theirs.minions_cpu_publish, jobs),
    );
    // The floor: the master cannot publish faster than its own CPU for the work allows.
    let floor_ours = ours.master_cpu_publish / cores as f64;
    let floor_theirs = theirs.master_cpu_publish / cores as f64;
    let ratio = |t: Option<f64>, floor: f64| {
        t.filter(|_| floor > 0.0)
            .map_or("—".to_string(), |t| format!("{:.2}×", t / floor))
    };
    println!();
    println!(
        "| floor: master CPU for {jobs} publishes / {cores} cores | value | ours (to last publish reply) / floor |"
    );
    println!("|---|---|---|");
    println!(
        "| master CPU measured in our burst | {floor_ours:.2} s | {} (target ≤ 1.25×) |",
        ratio(ours.to_last_reply, floor_ours)
    );
    println!(
        "| master CPU measured with LocalClient | {floor_theirs:.2} s | {} |",
        ratio(ours.to_last_reply, floor_theirs)
    );
    // Here the minions share the master's cores: what every process on the box spent while we
    // published bounds the time too.
    let floor_box = (ours.master_cpu_publish + ours.minions_cpu_publish + ours.daemon_cpu_publish)
        / cores as f64;
    println!(
        "| master, minions and daemon CPU in our burst (the lab shares {cores} cores) | {floor_box:.2} s | {} |",
        ratio(ours.to_last_reply, floor_box)
    );
    println!();
    let share = |d: f64, m: f64| {
        if m > 0.0 {
            format!("{:.1} %", 100.0 * d / m)
        } else {
            "—".to_string()
        }
    };
    println!(
        "daemon CPU per publish / master CPU per publish: {} to the last reply, {} over the whole burst (target < 5 %)",
        share(ours.daemon_cpu_publish, ours.master_cpu_publish),
        share(ours.daemon_cpu_all, ours.master_cpu_all)
    );
    println!(
        "ours: {} of {jobs} fired (max fire lateness {} ms), {} publish replies ({} failed), {} of {} results ({} not 0{}), {} of {jobs} runs ended",
        ours.fired,
        ours.max_late_ms,
        ours.replies,
        ours.failed_publishes,
        ours.results,
        jobs * minions,
        ours.not_zero.values().sum::<usize>(),
        if ours.not_zero.is_empty() {
            String::new()
        } else {
            format!(": {:?}", ours.not_zero)
        },
        ours.ended
    );
    println!(
        "LocalClient: {} publishes returned a jid ({} failed), {} of {} returns seen ({} with retcode not 0)",
        theirs.published,
        theirs.failed,
        theirs.returns,
        theirs.published * minions,
        theirs.not_zero
    );
    if ours.master_restarted || theirs.master_restarted {
        println!("warning: the master restarted during a phase; its CPU figures are not usable");
    }
    println!(
        "whole machine busy during the publishes: {:.2} of {cores} cores in our burst, {:.2} with LocalClient (master, minions, client and anything else on the box)",
        ours.machine_busy, theirs.machine_busy
    );
    println!(
        "minion job processes that crashed (\"An un-handled exception\" in minion.log): {} in our burst, {} with LocalClient",
        ours.minion_crashes, theirs.minion_crashes
    );
    for note in &notes {
        println!("lab: {note}");
    }
    if !ours.warnings.is_empty() {
        println!("daemon warnings and errors (digits as #), by count:");
        let mut w: Vec<_> = ours.warnings.iter().collect();
        w.sort_by(|a, b| b.1.cmp(a.1));
        for (text, count) in w.into_iter().take(8) {
            println!("  {count:6} × {text}");
        }
    }
}

/// Where the lab's processes are found.
struct Lab {
    master_pidfile: String,
    master_conf_dir: String,
    lab_dir: String,
    hz: f64,
}

/// CPU seconds at one moment.
#[derive(Clone, Copy, Debug)]
struct Sample {
    master: f64,
    minions: f64,
    daemon: f64,
    master_pid: Option<u32>,
    /// The whole machine's busy CPU seconds (/proc/stat), and when: the box is shared.
    busy: f64,
    at: Instant,
}

impl Sample {
    /// Cores the whole machine kept busy from `self` to `later`.
    fn cores_busy(&self, later: &Sample) -> f64 {
        let wall = later.at.saturating_duration_since(self.at).as_secs_f64();
        if wall > 0.0 {
            (later.busy - self.busy) / wall
        } else {
            0.0
        }
    }
}

impl Lab {
    fn sample(&self, daemon: Option<u32>) -> Sample {
        let procs = all_procs();
        // The master's processes rename themselves (EventPublisher's command line no longer
        // says salt-master), so its children count by descent from the matching ones.
        let master = self.ticks_of(&procs, |c| {
            c.contains("salt-master") && c.contains(&self.master_conf_dir)
        });
        let minions = self.ticks_of(&procs, |c| {
            c.contains("salt-minion") && c.contains(&self.lab_dir)
        });
        Sample {
            master,
            minions,
            daemon: daemon
                .and_then(|p| procs.get(&p))
                .map_or(0.0, |p| p.own as f64 / self.hz),
            master_pid: std::fs::read_to_string(&self.master_pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            busy: machine_busy_ticks() as f64 / self.hz,
            at: Instant::now(),
        }
    }

    /// Processes whose command line matches, and their descendants: their own CPU plus their
    /// reaped children's (a minion's per-job processes are gone by the next sample).
    fn ticks_of(&self, procs: &HashMap<u32, Proc>, matches: impl Fn(&str) -> bool) -> f64 {
        let mut set: HashSet<u32> = procs
            .iter()
            .filter(|(_, p)| matches(&p.cmdline))
            .map(|(&pid, _)| pid)
            .collect();
        // Descent, to a fixed point (the tree is shallow).
        loop {
            let more: Vec<u32> = procs
                .iter()
                .filter(|(pid, p)| !set.contains(pid) && set.contains(&p.ppid))
                .map(|(&pid, _)| pid)
                .collect();
            if more.is_empty() {
                break;
            }
            set.extend(more);
        }
        set.iter()
            .map(|pid| procs[pid].own + procs[pid].children)
            .sum::<u64>() as f64
            / self.hz
    }
}

struct Proc {
    ppid: u32,
    cmdline: String,
    /// utime + stime, in clock ticks.
    own: u64,
    /// cutime + cstime: children already reaped.
    children: u64,
}

fn all_procs() -> HashMap<u32, Proc> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may end between listing and reading; it is skipped.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.insert(
            pid,
            Proc {
                ppid: num(1) as u32,
                cmdline,
                own: num(11) + num(12),
                children: num(13) + num(14),
            },
        );
    }
    out
}

/// user + nice + system + irq + softirq + steal of all CPUs, in clock ticks.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `worker_threads` from the master's config (and its `master.d/*.conf`); Salt's default is 5.
fn worker_threads(master_config: &str) -> String {
    let mut files = vec![std::path::PathBuf::from(master_config)];
    if let Some(dir) = Path::new(master_config).parent()
        && let Ok(entries) = std::fs::read_dir(dir.join("master.d"))
    {
        let mut more: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut found = None;
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("worker_threads:") {
                found = Some(v.trim().to_string()); // a later file overrides
            }
        }
    }
    found.unwrap_or_else(|| "5 (Salt's default)".to_string())
}

/// Forwards each line of `from` into `tx`, wrapped by `wrap`, with the moment it was read.
fn forward<R: Read + Send + 'static, M: Send + 'static>(
    from: R,
    tx: mpsc::Sender<M>,
    mut wrap: impl FnMut(String, Timestamp) -> M + Send + 'static,
) {
    std::thread::spawn(move || {
        // Read to the end even when no one listens any more: a child blocked on a full pipe
        // would stall (the daemon logs synchronously).
        let mut listening = true;
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let m = wrap(line, Timestamp::now());
            listening = listening && tx.send(m).is_ok();
        }
    });
}

/// What the daemon's burst showed.
#[derive(Default)]
struct Ours {
    fired: usize,
    max_late_ms: i64,
    replies: usize,
    failed_publishes: usize,
    results: usize,
    not_zero: BTreeMap<String, usize>,
    ended: usize,
    to_last_reply: Option<f64>,
    to_last_result: Option<f64>,
    master_background: f64,
    master_cpu_publish: f64,
    master_cpu_all: f64,
    minions_cpu_publish: f64,
    daemon_cpu_publish: f64,
    daemon_cpu_all: f64,
    master_restarted: bool,
    warnings: BTreeMap<String, usize>,
    minion_crashes: usize,
    /// The machines hub's port, which the run's wrappers were told.
    port: u16,
    /// The launches' jids (from the publish replies).
    jids: HashSet<String>,
    /// Kept running until the lab has settled, and its directory with it.
    daemon: Option<Reaped>,
    dir: Option<tempfile::TempDir>,
    /// Cores busy (whole machine) from the scheduled second to the last publish reply.
    machine_busy: f64,
}

fn run_daemon(env: &BTreeMap<String, String>, lab: &Lab, jobs: usize, patience: Duration) -> Ours {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ahead = Timestamp::now()
        .checked_add(Duration::from_secs(AHEAD))
        .unwrap();
    let due = Timestamp::from_second(ahead.as_second()).unwrap();
    let utc = due.to_zoned_datetime(jiff::tz::TimeZone::UTC);
    let mut text = format!(
        "saltpeter_config:\n  salt_master_config: {}\n  machines_ws_bind_addr: 127.0.0.1\n  machines_ws_port: {port}\n  default_saltpeter_server_host: 127.0.0.1\n  default_wrapper_path: {}\n  logdir: {}\n  api_ws: false\n  database: {}\n",
        env["MASTER_CONFIG"],
        env!("CARGO_BIN_EXE_sp-wrapper"),
        dir.path().join("log").display(),
        dir.path().join("state/history.db").display()
    );
    for i in 0..jobs {
        text += &format!(
            "burst{i}:\n  sec: {}\n  min: {}\n  hour: {}\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  timezone: UTC\n  targets: '*'\n  command: 'true'\n",
            utc.second(),
            utc.minute(),
            utc.hour()
        );
    }
    std::fs::write(dir.path().join("burst.yaml"), text).unwrap();
    // Jobs that ran before have their text logs: creating 1,000 files is a first burst's cost
    // alone (ext4 inode allocation, a third of the daemon's CPU here). BURST_FRESH_LOGS=1
    // measures that first burst instead.
    if std::env::var("BURST_FRESH_LOGS").as_deref() != Ok("1") {
        let logdir = dir.path().join("log");
        std::fs::create_dir_all(&logdir).unwrap();
        for i in 0..jobs {
            std::fs::File::create(logdir.join(format!("burst{i}.log"))).unwrap();
        }
    }
    let mut daemon = Reaped(
        Command::new(env!("CARGO_BIN_EXE_saltpeter"))
            .args(["run", "-c"])
            .arg(dir.path())
            .env("SALTPETER_LOG", "info")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = daemon.id();
    let (tx, rx) = mpsc::channel::<String>();
    // BURST_DAEMON_LOG keeps the daemon's whole log, to look into what the figures hide.
    let mut keep = std::env::var_os("BURST_DAEMON_LOG")
        .map(|p| std::io::BufWriter::new(std::fs::File::create(p).unwrap()));
    forward(daemon.stdout.take().unwrap(), tx, move |line, _| {
        if let Some(f) = keep.as_mut() {
            let _ = writeln!(f, "{line}");
        }
        line
    });
    let mut ours = Ours {
        port,
        ..Ours::default()
    };
    let stamp = |line: &str| -> Option<Timestamp> { line.split_whitespace().next()?.parse().ok() };
    let since_due = |t: Timestamp| t.duration_since(due).as_secs_f64();
    let until = |t: Timestamp| {
        Duration::try_from(t.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO)
    };
    let mut early: Vec<String> = Vec::new();

    // Start-up: the daemon says it started well before the burst.
    let started_by = Instant::now() + until(due);
    loop {
        let Ok(line) = rx.recv_timeout(started_by.saturating_duration_since(Instant::now())) else {
            panic!(
                "the daemon did not start before the burst; its output:\n{}",
                early.join("\n")
            );
        };
        let started = line.contains("Saltpeter") && line.contains("started");
        early.push(line);
        if started {
            break;
        }
    }
    // The master's background rate, in a quiet window just before the burst.
    let quiet_from = due
        .checked_sub(QUIET_WINDOW + Duration::from_millis(300))
        .unwrap();
    std::thread::sleep(until(quiet_from));
    let q0 = (Instant::now(), lab.sample(Some(pid)));
    std::thread::sleep(QUIET_WINDOW);
    let s0 = lab.sample(Some(pid));
    ours.master_background = (s0.master - q0.1.master) / q0.0.elapsed().as_secs_f64();

    let deadline = Instant::now() + until(due) + patience;
    let mut last_reply: Option<Timestamp> = None;
    let mut last_result: Option<Timestamp> = None;
    let mut s1: Option<Sample> = None;
    let mut s2: Option<Sample> = None;
    for line in early.drain(..).chain(std::iter::from_fn(|| {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    })) {
        let Some(at) = stamp(&line) else { continue };
        let level = line.split_whitespace().nth(1).unwrap_or("");
        if level == "WARN" || level == "ERROR" {
            // Digits as '#', so one kind of message counts once whatever its run or port.
            let text: String = line
                .split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .take(160)
                .collect();
            *ours.warnings.entry(text).or_default() += 1;
        }
        if line.contains("Firing ") {
            ours.fired += 1;
            let late = line
                .split("late_ms=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            ours.max_late_ms = ours.max_late_ms.max(late);
        } else if line.contains("Waiting for Salt to confirm wrapper execution for job")
            || line.contains("SALT-MASTER ERROR")
        {
            // The reply to a publish: accepted, or failed for good after the worker's retries.
            ours.replies += 1;
            if let Some(jid) = line.split("for job ").nth(1) {
                ours.jids
                    .insert(jid.trim_end_matches('.').trim().to_string());
            }
            if line.contains("SALT-MASTER ERROR") {
                ours.failed_publishes += 1;
            }
            last_reply = last_reply.max(Some(at));
            if ours.replies == jobs {
                s1 = Some(lab.sample(Some(pid)));
            }
        } else if let Some(rest) = line.split("Result for ").nth(1) {
            ours.results += 1;
            last_result = last_result.max(Some(at));
            let code = rest
                .split(": exit code ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or("?");
            if code != "0" {
                let meaning = rest
                    .split_once('(')
                    .map_or("", |(_, m)| m.trim_end_matches(')'));
                *ours
                    .not_zero
                    .entry(format!("{code} ({meaning})"))
                    .or_default() += 1;
            }
        } else if line.contains("run ended") {
            ours.ended += 1;
        }
        // Every run ended: every target has its result.
        if ours.ended == jobs {
            s2 = Some(lab.sample(Some(pid)));
            break;
        }
    }
    // Gave up (or the daemon died): what was seen so far is reported.
    let end = lab.sample(Some(pid));
    ours.daemon = Some(daemon);
    ours.dir = Some(dir);
    let s1 = s1.unwrap_or(end);
    let s2 = s2.unwrap_or(end);
    ours.to_last_reply = last_reply.filter(|_| ours.replies == jobs).map(since_due);
    ours.to_last_result = last_result.filter(|_| ours.ended == jobs).map(since_due);
    if ours.replies < jobs || ours.ended < jobs {
        eprintln!(
            "burst: gave up after {patience:?}: {} of {jobs} publish replies, {} results, {} of {jobs} runs ended; last reply at {:?}, last result at {:?} (seconds after the slot)",
            ours.replies,
            ours.results,
            ours.ended,
            last_reply.map(since_due),
            last_result.map(since_due)
        );
    }
    ours.master_cpu_publish = s1.master - s0.master;
    ours.master_cpu_all = s2.master - s0.master;
    ours.minions_cpu_publish = s1.minions - s0.minions;
    ours.daemon_cpu_publish = s1.daemon - s0.daemon;
    ours.daemon_cpu_all = s2.daemon - s0.daemon;
    ours.machine_busy = s0.cores_busy(&s1);
    ours.master_restarted = s0.master_pid != s2.master_pid || q0.1.master_pid != s0.master_pid;
    ours
}

/// What Salt's own client showed.
#[derive(Default)]
struct Theirs {
    published: usize,
    failed: usize,
    returns: usize,
    not_zero: usize,
    to_last_publish: Option<f64>,
    to_last_return: Option<f64>,
    client_cpu: f64,
    master_cpu_publish: f64,
    master_cpu_all: f64,
    minions_cpu_publish: f64,
    master_restarted: bool,
    minion_crashes: usize,
    jids: HashSet<String>,
    machine_busy: f64,
}

/// Return events seen on the bus, by jid (once per minion): when, and whether retcode was 0.
#[derive(Default)]
struct Returns {
    by_jid: HashMap<String, Vec<(Timestamp, bool)>>,
    seen: HashSet<String>,
}

impl Returns {
    fn note(&mut self, line: &str, read_at: Timestamp) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return;
        };
        let tag = v["tag"].as_str().unwrap_or("");
        let Some((jid, _minion)) = tag
            .strip_prefix("salt/job/")
            .and_then(|r| r.split_once("/ret/"))
        else {
            return;
        };
        if !self.seen.insert(tag.to_string()) {
            return;
        }
        let data = &v["data"];
        // The master's own stamp of the return, else when tap printed it.
        let at = data["_stamp"]
            .as_str()
            .and_then(|s| s.parse::<jiff::civil::DateTime>().ok())
            .and_then(|d| d.to_zoned_datetime(jiff::tz::TimeZone::UTC).ok())
            .map_or(read_at, |z| z.timestamp());
        let code = data["retcode"]
            .as_i64()
            .or_else(|| data["return"]["retcode"].as_i64())
            .unwrap_or(-1);
        self.by_jid
            .entry(jid.to_string())
            .or_default()
            .push((at, code == 0));
    }
}

enum Msg {
    /// A line of `saltpeter tap --json` (a return event), and when it was read.
    Tap(String, Timestamp),
    TapErr(String),
    Py(String),
    PyErr(String),
}

fn run_localclient(
    env: &BTreeMap<String, String>,
    lab: &Lab,
    jobs: usize,
    minions: usize,
    patience: Duration,
) -> Theirs {
    let mut theirs = Theirs::default();
    let (tx, rx) = mpsc::channel::<Msg>();
    // Returns are watched on the bus by our `tap` (cheap, and one bus subscriber like the
    // daemon), so LocalClient's loop stays the plain publish loop it is in Salt.
    let mut tap = Reaped(
        Command::new(env!("CARGO_BIN_EXE_saltpeter"))
            .args([
                "tap",
                "--json",
                "--tag",
                "salt/job/*/ret/*",
                "--salt-config",
            ])
            .arg(&env["MASTER_CONFIG"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    forward(tap.stdout.take().unwrap(), tx.clone(), Msg::Tap);
    forward(tap.stderr.take().unwrap(), tx.clone(), |l, _| {
        Msg::TapErr(l)
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/burst_localclient.py");
    let mut py = Reaped(
        Command::new(format!("{}/python", env["SALT_BIN"]))
            .arg(script)
            .arg(&env["MASTER_CONFIG"])
            .arg(jobs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    forward(py.stdout.take().unwrap(), tx.clone(), |l, _| Msg::Py(l));
    forward(py.stderr.take().unwrap(), tx, |l, _| Msg::PyErr(l));

    // Returns by jid, kept until the jids are known (LocalClient names them at the end).
    let mut rets = Returns::default();

    // Both ready: tap listening and the client built.
    let ready_by = Instant::now() + Duration::from_secs(60);
    let (mut tap_ready, mut py_ready) = (false, false);
    let mut errors: Vec<String> = Vec::new();
    while !(tap_ready && py_ready) {
        match rx.recv_timeout(ready_by.saturating_duration_since(Instant::now())) {
            Ok(Msg::TapErr(l)) => {
                tap_ready |= l.contains("listening");
                errors.push(format!("tap: {l}"));
            }
            Ok(Msg::Py(l)) => py_ready |= l == "ready",
            Ok(Msg::PyErr(l)) => errors.push(format!("python: {l}")),
            Ok(Msg::Tap(l, at)) => rets.note(&l, at),
            Err(_) => {
                eprintln!(
                    "burst: LocalClient phase not ready in 60 s (tap {tap_ready}, python {py_ready}):\n{}",
                    errors.join("\n")
                );
                return theirs;
            }
        }
    }
    let p0 = lab.sample(None);
    let _ = py.stdin.as_mut().unwrap().write_all(b"go\n");
    let _ = py.stdin.as_mut().unwrap().flush();
    let deadline = Instant::now() + patience;
    let mut done: Option<serde_json::Value> = None;
    let mut p1: Option<Sample> = None;
    let mut want: HashSet<String> = HashSet::new();
    loop {
        // All returns of the published jids in, or out of patience.
        if done.is_some() {
            let got: usize = want
                .iter()
                .map(|j| rets.by_jid.get(j).map_or(0, Vec::len))
                .sum();
            if got >= want.len() * minions {
                break;
            }
        }
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Msg::Tap(l, at)) => rets.note(&l, at),
            Ok(Msg::Py(l)) => {
                if let Some(json) = l.strip_prefix("done ") {
                    p1 = Some(lab.sample(None));
                    let v: serde_json::Value = serde_json::from_str(json).unwrap();
                    want = v["jids"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|j| j.as_str().map(String::from))
                        .collect();
                    done = Some(v);
                }
            }
            Ok(Msg::PyErr(l)) => {
                if errors.len() < 20 {
                    errors.push(format!("python: {l}"));
                }
            }
            Ok(Msg::TapErr(l)) => errors.push(format!("tap: {l}")),
            Err(_) => break,
        }
    }
    let p2 = lab.sample(None);
    drop(tap);
    drop(py);
    let Some(done) = done else {
        eprintln!(
            "burst: LocalClient did not finish its {jobs} publishes in {patience:?}:\n{}",
            errors.join("\n")
        );
        return theirs;
    };
    let start = done["start"].as_f64().unwrap_or(0.0);
    let end = done["end"].as_f64().unwrap_or(0.0);
    theirs.published = want.len();
    theirs.jids = want.clone();
    theirs.failed = done["failed"].as_u64().unwrap_or(0) as usize;
    theirs.client_cpu = done["cpu"].as_f64().unwrap_or(0.0);
    theirs.to_last_publish = Some(end - start);
    let ours_rets: Vec<&(Timestamp, bool)> = want
        .iter()
        .filter_map(|j| rets.by_jid.get(j))
        .flatten()
        .collect();
    theirs.returns = ours_rets.len();
    theirs.not_zero = ours_rets.iter().filter(|(_, ok)| !ok).count();
    if theirs.returns >= want.len() * minions {
        theirs.to_last_return = ours_rets
            .iter()
            .map(|(at, _)| at.as_microsecond() as f64 / 1e6 - start)
            .reduce(f64::max);
    } else {
        eprintln!(
            "burst: {} of {} LocalClient returns seen in {patience:?} ({} returns of any job on the bus); tap and python said:\n{}",
            theirs.returns,
            want.len() * minions,
            rets.seen.len(),
            errors.join("\n")
        );
    }
    let p1 = p1.unwrap_or(p2);
    theirs.master_cpu_publish = p1.master - p0.master;
    theirs.master_cpu_all = p2.master - p0.master;
    theirs.minions_cpu_publish = p1.minions - p0.minions;
    theirs.machine_busy = p0.cores_busy(&p1);
    theirs.master_restarted = p0.master_pid != p2.master_pid;
    theirs
}

/// Job processes the lab's minions lost so far: Salt logs each one's unhandled exception (under
/// load, a Salt 3007 minion's own event bus closes and every job then dies returning).
fn minion_crashes(lab: &Lab) -> usize {
    let Ok(dir) = std::fs::read_dir(&lab.lab_dir) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("minion-"))
        .map(|e| {
            let log = std::fs::read(e.path().join("minion.log")).unwrap_or_default();
            String::from_utf8_lossy(&log)
                .matches("An un-handled exception from the multiprocessing process")
                .count()
        })
        .sum()
}

/// Brings the lab back to quiet and healthy (before the first phase and after each): waits
/// for the phase's job processes on the minions to end, restarts a minion that no longer
/// answers `test.ping` (a broken one returns nothing until restarted), and ends the burst's
/// wrappers still running by then (left, they retry their daemon for an hour). Says what it did.
fn settle(
    env: &BTreeMap<String, String>,
    lab: &Lab,
    patience: Duration,
    jids: &HashSet<String>,
    wrappers_of: Option<u16>,
) -> Vec<String> {
    let mut notes = Vec::new();
    let mut say = |note: String| {
        eprintln!("burst: {note}");
        notes.push(note);
    };
    // Only the phase's own jobs: others share the lab and may run long ones.
    let jobs_running = || {
        all_procs()
            .values()
            .filter(|p| p.cmdline.contains(&lab.lab_dir))
            .filter_map(|p| p.cmdline.split("ProcessPayload(jid=").nth(1))
            .filter(|rest| jids.contains(rest.split(')').next().unwrap_or("")))
            .count()
    };
    let started = Instant::now();
    // None for a few seconds in a row: a busy minion forks its backlog late.
    let drain = |until: Instant| {
        let mut quiet = 0;
        let mut running = jobs_running();
        while quiet < 3 && Instant::now() < until {
            std::thread::sleep(Duration::from_secs(1));
            running = jobs_running();
            quiet = if running == 0 { quiet + 1 } else { 0 };
        }
        running
    };
    // A healthy minion works off its backlog; a broken one may hold it for minutes, so it
    // gets a short wait before being asked whether it still answers.
    let mut running = drain(started + Duration::from_secs(30).min(patience));
    let silent = silent_minions(env);
    if !silent.is_empty() {
        say(format!(
            "restarting minion(s) that do not answer test.ping (with {running} job processes left): {}",
            silent.join(" ")
        ));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/lab/lab.sh");
        for id in &silent {
            for verb in ["stop-minion", "start-minion"] {
                let _ = Command::new(script)
                    .args([
                        verb,
                        id,
                        "--dir",
                        &env["LAB_DIR"],
                        "--salt",
                        &env["SALT_VERSION"],
                    ])
                    .stdout(Stdio::null())
                    .status();
            }
        }
        let by = Instant::now() + Duration::from_secs(120);
        loop {
            let still = silent_minions(env);
            if still.is_empty() {
                break;
            }
            if Instant::now() > by {
                say(format!(
                    "still silent after restarting: {}",
                    still.join(" ")
                ));
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    running = drain(started + patience);
    if started.elapsed() > Duration::from_secs(15) || running > 0 {
        say(format!(
            "settling took {:.0} s; {running} minion job processes still running",
            started.elapsed().as_secs_f64()
        ));
    }
    if let Some(port) = wrappers_of {
        // Only wrappers told this run's hub address: nothing else on the machine. No more
        // start now: the minions' backlog is done or gone.
        let url = format!("SP_WEBSOCKET_URL=ws://127.0.0.1:{port}");
        let mut ended = 0;
        for pid in all_procs().into_keys() {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if environ.split(|&b| b == 0).any(|v| v == url.as_bytes()) {
                let target = nix::unistd::Pid::from_raw(pid as i32);
                if nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL).is_ok() {
                    ended += 1;
                }
            }
        }
        if ended > 0 {
            say(format!(
                "ended {ended} wrappers of the burst still running after the minions settled"
            ));
        }
    }
    notes
}

/// The lab's minions that do not answer Salt's own `test.ping`.
fn silent_minions(env: &BTreeMap<String, String>) -> Vec<String> {
    let conf_dir = Path::new(&env["MASTER_CONFIG"]).parent().unwrap();
    let out = Command::new(format!("{}/salt", env["SALT_BIN"]))
        .arg("-c")
        .arg(conf_dir)
        .args(["*", "test.ping", "--out=json", "--static", "--timeout=10"])
        .stderr(Stdio::null())
        .output();
    let answered: serde_json::Value = out
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default();
    env["MINIONS"]
        .split_whitespace()
        .filter(|m| answered[*m] != serde_json::Value::Bool(true))
        .map(String::from)
        .collect()
}
