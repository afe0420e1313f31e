//! Detaching from Salt: fork, new session, fork again, standard streams to /dev/null. The
//! first process exits 0 at once, which is Salt's (and so Phase 1's) confirmation.

use nix::unistd::{ForkResult, fork, setsid};

/// Returns in the detached grandchild only; the original process and the middle child exit.
///
/// # Safety (upheld by the caller)
/// Call while the process is single-threaded: the child of `fork` may only do
/// async-signal-safe work otherwise.
pub fn detach() -> std::io::Result<()> {
    // SAFETY: `sp-wrapper` calls this first thing in `main`, before any thread exists.
    #[allow(unsafe_code)]
    match unsafe { fork() }.map_err(std::io::Error::from)? {
        ForkResult::Parent { .. } => {
            println!("Wrapper started successfully");
            std::process::exit(0);
        }
        ForkResult::Child => {}
    }
    setsid().map_err(std::io::Error::from)?;
    // SAFETY: as above; still single-threaded.
    #[allow(unsafe_code)]
    match unsafe { fork() }.map_err(std::io::Error::from)? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    nix::unistd::dup2_stdin(&null).map_err(std::io::Error::from)?;
    nix::unistd::dup2_stdout(&null).map_err(std::io::Error::from)?;
    nix::unistd::dup2_stderr(&null).map_err(std::io::Error::from)?;
    std::env::set_current_dir("/")?;
    Ok(())
}
