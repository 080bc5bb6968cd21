//! The one bridge from async code to blocking work: CPU-bound steps (sealing,
//! compressing, key derivation) and calls that may sleep (sled, local files) run on
//! tokio's blocking pool, never on a runtime thread.
//!
//! A task that panicked or was cancelled becomes an error here, once, with the name
//! of the work that failed, rather than in every caller (object_store's
//! `maybe_spawn_blocking` does the same).

use crate::error::{Error, Result};

/// Runs `f` on the blocking pool and returns what it returns.
///
/// Errors: `Io` naming `what` when the task panicked or was cancelled.
pub async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    joined(what, tokio::task::spawn_blocking(f).await)
}

/// Runs a fallible `f` on the blocking pool.
///
/// Errors: `f`'s own error; `Io` naming `what` when the task panicked or was cancelled.
pub async fn try_blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    blocking(what, f).await?
}

/// The outcome of a joined tokio task.
///
/// Errors: `Io` naming `what` when the task panicked or was cancelled.
pub fn joined<T>(what: &str, r: std::result::Result<T, tokio::task::JoinError>) -> Result<T> {
    r.map_err(|e| {
        let how = if e.is_panic() {
            "panicked"
        } else {
            "was cancelled"
        };
        Error::io(
            format!("Internal error: the {what} task {how}"),
            std::io::Error::other(e),
        )
    })
}

/// The outcome of a joined OS thread (a reader of a child process's pipe, say).
///
/// Errors: `Io` naming `what` when the thread panicked.
pub fn thread_joined<T>(what: &str, r: std::thread::Result<T>) -> Result<T> {
    r.map_err(|_| {
        Error::io(
            format!("Internal error: the {what} thread panicked"),
            std::io::Error::other("panic"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_naming_the_work() {
        assert_eq!(blocking("sum", || 1 + 1).await.unwrap(), 2);
        let e = blocking("exploding", || -> u8 { panic!("boom") })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Io);
        assert!(e.to_string().contains("the exploding task panicked"), "{e}");
        let e = try_blocking("refusing", || -> Result<()> {
            Err(Error::InvalidInput("No".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::InvalidInput);
    }
}
