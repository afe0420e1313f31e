//! The only reader of the wall clock, and a wall-clock timer that wakes at an absolute time
//! and notices when the clock is set (Linux `timerfd` with `TFD_TIMER_CANCEL_ON_SET`), so the
//! scheduler sleeps until the next due second with no polling, whatever NTP or an operator
//! does to the clock.

use std::os::fd::{AsFd, AsRawFd, RawFd};

use jiff::Timestamp;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Now, by the wall clock (moved by `SALTPETER_CLOCK_SKEW_MS`, if set).
pub fn now() -> Timestamp {
    match skew() {
        0 => Timestamp::now(),
        ms => Timestamp::now() + jiff::SignedDuration::from_millis(ms),
    }
}

/// `SALTPETER_CLOCK_SKEW_MS`: this process's clock runs that far ahead (or behind, when
/// negative) of the machine's. For tests of several daemons whose clocks disagree; leases
/// never depend on it (they are judged by the database's clock).
fn skew() -> i64 {
    static SKEW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *SKEW.get_or_init(|| {
        std::env::var("SALTPETER_CLOCK_SKEW_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// Why a [`WallTimer`] woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The deadline was reached.
    Deadline,
    /// The wall clock was set (jumped) while sleeping; the caller should re-plan.
    ClockChanged,
}

/// A one-shot timer on `CLOCK_REALTIME`.
pub struct WallTimer {
    fd: AsyncFd<Tfd>,
}

/// `TimerFd` as tokio wants it (by raw descriptor).
struct Tfd(TimerFd);

impl AsRawFd for Tfd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Stands in for "no deadline": the timer still arms, so clock changes are still seen.
const FAR_FUTURE_SECS: i64 = 4_102_444_800; // 2100-01-01

impl WallTimer {
    pub fn new() -> std::io::Result<WallTimer> {
        let fd = TimerFd::new(
            ClockId::CLOCK_REALTIME,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // SAFETY: `Tfd` owns the descriptor; it stays open and the same until the `AsyncFd`
        // (which owns the `Tfd`) is dropped.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register_with_interest(Tfd(fd), Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(WallTimer { fd })
    }

    /// Sleeps until `deadline` (or indefinitely) by the wall clock.
    pub async fn sleep_until(&mut self, deadline: Option<Timestamp>) -> std::io::Result<Wake> {
        // The deadline is on this process's clock; the kernel's timer is on the machine's.
        let deadline = deadline.map(|t| t - jiff::SignedDuration::from_millis(skew()));
        let (secs, nanos) = match deadline {
            Some(t) => (t.as_second(), t.subsec_nanosecond()),
            None => (FAR_FUTURE_SECS, 0),
        };
        // A deadline at or before the epoch would disarm the timer; it is due anyway.
        if secs <= 0 {
            return Ok(Wake::Deadline);
        }
        let when = TimeSpec::new(secs, i64::from(nanos));
        self.fd.get_ref().0.set(
            Expiration::OneShot(when),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME | TimerSetTimeFlags::TFD_TIMER_CANCEL_ON_SET,
        )?;
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 8];
            match nix::unistd::read(guard.get_inner().0.as_fd(), &mut buf) {
                Ok(_) => return Ok(Wake::Deadline),
                Err(nix::errno::Errno::ECANCELED) => return Ok(Wake::ClockChanged),
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
