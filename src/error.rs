//! The error type every layer returns, with a kind that survives up the stack.
//!
//! The kind is what callers branch on: the CLI maps it to an exit code, the FUSE
//! layer to an errno, and `wal-fetch` must tell "not in the archive" from "could not
//! find out". So errors are never flattened to strings below the CLI.

/// What went wrong, coarsely enough for callers to decide what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    /// An object, snapshot or file does not exist.
    NotFound,
    /// Something that must be created exactly once already exists.
    AlreadyExists,
    /// The user asked for something that cannot be done as asked.
    InvalidInput,
    /// No key in the repository opens with the given passphrase.
    WrongPassphrase,
    /// Stored data failed authentication or does not parse: never return its bytes.
    Corrupt,
    /// Storage could not be reached or answered with an error after retries.
    Unavailable,
    /// Another process holds a lock that this operation needs.
    Locked,
    /// An external program (pg_dump, pg_basebackup) failed.
    External,
    /// Anything else from the operating system.
    Io,
}

/// A pgvault error: a kind for callers and a message for people.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} not found in {location}")]
    NotFound { what: String, location: String },

    #[error("{what} already exists in {location}")]
    AlreadyExists { what: String, location: String },

    #[error("{0}")]
    InvalidInput(String),

    #[error("Wrong passphrase for repository {0}: no key in keys/ opens with it")]
    WrongPassphrase(String),

    #[error("{0}")]
    Corrupt(String),

    #[error("{0}")]
    Unavailable(String),

    #[error("{0}")]
    Locked(String),

    #[error("{0}")]
    External(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// An error another pgvault process (the WAL agent) met and passed on, with its
    /// kind intact.
    #[error("{message}")]
    Relayed { kind: ErrorKind, message: String },
}

impl Error {
    /// The kind of this error, for exit codes and errno mapping.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::WrongPassphrase(_) => ErrorKind::WrongPassphrase,
            Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Locked(_) => ErrorKind::Locked,
            Error::External(_) => ErrorKind::External,
            Error::Io { .. } => ErrorKind::Io,
            Error::Relayed { kind, .. } => *kind,
        }
    }

    /// An I/O error with the operation and path it concerns.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether this is a write into a stream whose reading side had stopped: the
    /// knock-on effect of a failure told elsewhere.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// An I/O error on a path, named in the message.
    pub fn io_path(action: &str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::io(format!("Cannot {action} {}", path.display()), source)
    }

    /// The errno a FUSE reply should carry for this error.
    pub fn errno(&self) -> i32 {
        match self.kind() {
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::InvalidInput => libc::EINVAL,
            ErrorKind::AlreadyExists => libc::EEXIST,
            ErrorKind::Locked => libc::EBUSY,
            _ => libc::EIO,
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
