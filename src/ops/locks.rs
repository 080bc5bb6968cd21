//! `locks` and `unlock`: who holds the repository, and removing what crashed
//! processes left behind.

use crate::error::Result;
use crate::store::lock::FoundLock;
use crate::store::Repository;

/// What `unlock` did and what it left.
#[derive(Debug)]
pub struct Unlocked {
    pub removed: Vec<FoundLock>,
    /// Live locks left in place (none with `all`).
    pub live: Vec<FoundLock>,
}

/// Every lock, judged live or stale now.
///
/// Errors: backend errors.
pub async fn list(repo: &Repository) -> Result<Vec<FoundLock>> {
    repo.locks().await
}

/// Removes stale locks, or every lock with `all`.
///
/// Errors: backend errors.
pub async fn unlock(repo: &Repository, all: bool) -> Result<Unlocked> {
    let removed = repo.unlock(all).await?;
    let live = if all {
        Vec::new()
    } else {
        repo.locks()
            .await?
            .into_iter()
            .filter(|l| l.is_live())
            .collect()
    };
    Ok(Unlocked { removed, live })
}
