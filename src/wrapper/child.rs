//! The job's process: `/bin/sh -c <command>` in its own process group, as the job's user
//! (groups included), stdout and stderr merged into one pipe in order.

use nix::unistd::{Pid, User};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};

use super::settings::Settings;

/// A running job.
pub struct Job {
    pub child: Child,
    pub pgid: Pid,
    /// The read end of the merged output pipe.
    pub output: File,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot switch to user {0}: no such user")]
    NoUser(String),
    #[error("cannot create the output pipe: {0}")]
    Pipe(#[source] nix::Error),
    #[error("cannot start /bin/sh: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Starts the job. Must run before the wrapper starts threads (the user switch runs between
/// fork and exec, where only a single-threaded parent is safe).
pub fn spawn(settings: &Settings) -> Result<Job, SpawnError> {
    let (read, write): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    let write2 = write.try_clone().map_err(SpawnError::Spawn)?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&settings.command)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::from(write2))
        .process_group(0);
    if let Some(dir) = &settings.cwd {
        cmd.current_dir(dir);
    }
    if let Some(name) = &settings.user {
        let user = User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| SpawnError::NoUser(name.clone()))?;
        cmd.env("HOME", &user.dir)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name)
            .env("SHELL", &user.shell);
        let cname = std::ffi::CString::new(user.name.clone())
            .map_err(|e| SpawnError::Spawn(std::io::Error::other(e)))?;
        let (uid, gid) = (user.uid, user.gid);
        // SAFETY: runs in the forked child before exec; the wrapper is single-threaded when it
        // spawns (see `spawn`'s doc), so these libc calls cannot deadlock on a lock held by
        // another thread.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::initgroups(&cname, gid)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
                Ok(())
            });
        }
    }
    let child = cmd.spawn().map_err(SpawnError::Spawn)?;
    let pgid = Pid::from_raw(child.id() as i32);
    Ok(Job {
        child,
        pgid,
        output: File::from(read),
    })
}

/// The exit code a status stands for: the code, or 128 + N for a signal N.
pub fn exit_code(status: ExitStatus) -> i64 {
    match (status.code(), status.signal()) {
        (Some(code), _) => i64::from(code),
        (None, Some(sig)) => 128 + i64::from(sig),
        (None, None) => 255,
    }
}
