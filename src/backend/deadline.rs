//! Deadlines for a store that stops answering.
//!
//! A network partition, a hung load balancer, an overloaded endpoint or a hung NFS
//! mount look alike from here: a request goes out and nothing comes back. Without a
//! bound, `wal-fetch` stalls recovery with no line in the log, `wal-push` stops
//! archiving silently and a mounted read blocks pg_restore for ever. So every request
//! has a deadline, all derived from one setting, `--io-timeout` (T, default 30 s):
//!
//! | bound | value | at T = 30 s | why |
//! | --- | --- | --- | --- |
//! | connect (TCP, TLS) | T/6 | 5 s | a reachable store connects in milliseconds |
//! | first byte of an answer | T | 30 s | covers sending a chunk (≤ a few MiB) and the store's think time |
//! | silence inside a download | T/3 | 10 s | bytes flow steadily or not at all |
//! | one attempt | 2T | 60 s | |
//! | all attempts of one request, with backoff | 3T | 90 s | rides out a restart of the store |
//! | one call, everything included | 3.5T | 105 s | the bound a command waits on one request |
//! | one step of the local backend | 3T | 90 s | a local fsync may take tens of seconds |
//!
//! A slow store that answers is not an error: only silence past a deadline is. After
//! a call gave up for want of an answer, the store counts as down for a short while
//! ([`Breaker`]): calls in that window fail at once instead of each waiting out its
//! own deadline, so the clean-up after a failure (releasing a lock, recording the
//! attempt) does not add minutes. After each window one call goes through as a probe
//! while the others keep failing at once, so a mount answers EIO at once (but for
//! one read per window) until the store is back. With the defaults no command waits more than two minutes on a store that
//! does not answer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The deadlines of one store, all scaled from one duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoTimeouts {
    io: Duration,
}

impl Default for IoTimeouts {
    fn default() -> Self {
        IoTimeouts { io: Self::DEFAULT }
    }
}

impl IoTimeouts {
    /// The default T: see the module documentation.
    pub const DEFAULT: Duration = Duration::from_secs(30);
    /// The smallest T accepted: below it, a busy but healthy store would fail.
    pub const MIN: Duration = Duration::from_secs(1);
    /// The largest T accepted: a day would mean no deadline at all.
    pub const MAX: Duration = Duration::from_secs(3600);

    /// Deadlines scaled from `io`.
    ///
    /// Errors: `InvalidInput` when `io` is outside [`Self::MIN`]..=[`Self::MAX`].
    pub fn new(io: Duration) -> Result<Self> {
        if !(Self::MIN..=Self::MAX).contains(&io) {
            return Err(Error::InvalidInput(format!(
                "I/O timeout {} is out of range: give between {:?} and {}",
                crate::time::format_duration(io),
                Self::MIN,
                crate::time::format_duration(Self::MAX)
            )));
        }
        Ok(IoTimeouts { io })
    }

    /// T itself: how long to wait for the first byte of an answer.
    pub fn first_byte(&self) -> Duration {
        self.io
    }

    /// How long to wait for a connection (TCP and TLS).
    pub fn connect(&self) -> Duration {
        self.io / 6
    }

    /// How long a download may go without a byte.
    pub fn stall(&self) -> Duration {
        self.io / 3
    }

    /// How long one attempt may take.
    pub fn attempt(&self) -> Duration {
        self.io * 2
    }

    /// How long all attempts of one request may take, backoff included.
    pub fn operation(&self) -> Duration {
        self.io * 3
    }

    /// The whole of one call, reading the answer included.
    pub fn call(&self) -> Duration {
        self.io * 7 / 2
    }

    /// One blocking step of the local backend.
    pub fn local_step(&self) -> Duration {
        self.io * 3
    }

    /// The first retry's backoff bound.
    pub fn initial_backoff(&self) -> Duration {
        self.io / 120
    }

    /// No retry waits longer than this.
    pub fn max_backoff(&self) -> Duration {
        self.io * 2 / 3
    }

    /// How long a store that gave no answer counts as down.
    pub fn down_for(&self) -> Duration {
        self.io / 6
    }
}

/// Remembers that a store stopped answering, so that the calls right after fail at
/// once with the same explanation. Once per window one call goes through as a probe;
/// any answer from the store closes it again.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: Arc<Mutex<Option<Tripped>>>,
    window: Duration,
}

#[derive(Debug, Clone)]
struct Tripped {
    at: Instant,
    why: String,
}

impl Breaker {
    /// A closed breaker that stays open for `window` once tripped.
    pub fn new(window: Duration) -> Self {
        Breaker {
            state: Arc::new(Mutex::new(None)),
            window,
        }
    }

    /// Refuses a call (described by `call`, e.g. "to read s3://b/config") while the
    /// store counts as down.
    ///
    /// Errors: `Unavailable` repeating why the store was given up on, then naming the
    /// call refused.
    pub fn check(&self, call: &str) -> Result<()> {
        let mut state = self.state.lock().expect("breaker lock");
        match &mut *state {
            Some(t) if t.at.elapsed() < self.window => Err(Error::Unavailable(format!(
                "{} (so not trying {call} for another {:.1?})",
                t.why,
                self.window.saturating_sub(t.at.elapsed())
            ))),
            // Half-open: this call is the probe, and the window starts again, so
            // the calls beside it keep failing at once instead of each waiting out a
            // deadline. An answer closes the breaker; a probe that is given up or
            // dropped leaves the next window's first call to try.
            Some(t) => {
                t.at = Instant::now();
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The store did not answer: `why` says so, naming it.
    pub fn trip(&self, why: &str) {
        *self.state.lock().expect("breaker lock") = Some(Tripped {
            at: Instant::now(),
            why: why.to_string(),
        });
    }

    /// The store answered.
    pub fn close(&self) {
        *self.state.lock().expect("breaker lock") = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_scale_from_one_setting_and_stay_under_two_minutes() {
        let d = IoTimeouts::default();
        assert_eq!(d.connect(), Duration::from_secs(5));
        assert_eq!(d.operation(), Duration::from_secs(90));
        assert!(d.call() < Duration::from_secs(120));
        let short = IoTimeouts::new(Duration::from_secs(2)).unwrap();
        assert_eq!(short.call(), Duration::from_secs(7));
        for bad in [
            Duration::ZERO,
            Duration::from_millis(10),
            Duration::from_secs(86_400),
        ] {
            let e = IoTimeouts::new(bad).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn a_tripped_breaker_refuses_until_its_window_passes_or_an_answer_comes() {
        let b = Breaker::new(Duration::from_millis(200));
        b.check("to read x").unwrap();
        b.trip("S3 endpoint http://x did not answer to read x");
        let e = b.check("to write y").unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Unavailable);
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "S3 endpoint http://x did not answer to read x (so not trying to write y for another "
            ),
            "{msg}"
        );
        std::thread::sleep(Duration::from_millis(250));
        b.check("to write y").unwrap();
        // One probe per window: the calls beside it still fail at once.
        assert!(b.check("to write z").is_err());
        b.trip("again");
        b.close();
        b.check("to write y").unwrap();
    }
}
