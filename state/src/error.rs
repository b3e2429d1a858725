//! Errors of the state store: one enum per operation (STYLE item 9), each with the shared
//! `Io { op, path, source }`, `Corrupt { path, offset, reason }` and `Poisoned` cases, and
//! one-line messages that name the operation, the file and the offset (item 10).
//!
//! Internally everything travels as a [`Fault`]; each public operation converts it into its
//! own enum at the boundary.

use std::io;
use std::path::{Path, PathBuf};

/// The shared failure cases, as they travel inside the store.
#[derive(Debug)]
pub enum Fault {
    /// An I/O call failed.
    Io {
        /// What was being done ("write segment", "fdatasync manifest", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error from the operating system (or the simulated disk).
        source: io::Error,
    },
    /// Bytes read from disk are not what the store wrote.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The byte offset of the bad frame or field.
        offset: u64,
        /// What is wrong, in a few words.
        reason: String,
    },
    /// An earlier write or sync failed: the store failed closed (fsyncgate: never retried).
    Poisoned(String),
}

impl Fault {
    /// An I/O fault for `op` on `path`.
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> Fault {
        Fault::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
    /// A corruption fault at `offset` of `path`.
    pub fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> Fault {
        Fault::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            Fault::Corrupt {
                path,
                offset,
                reason,
            } => write!(f, "{} at offset {offset}: {reason}", path.display()),
            Fault::Poisoned(first) => {
                write!(
                    f,
                    "store failed closed after an earlier I/O error ({first})"
                )
            }
        }
    }
}

macro_rules! op_error {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident $body:tt,)* }) => {
        $(#[$meta])*
        #[derive(Debug, thiserror::Error)]
        pub enum $name {
            /// An I/O call failed.
            #[error("{op} {}: {source}", path.display())]
            Io {
                /// The operation.
                op: &'static str,
                /// The file or directory.
                path: PathBuf,
                /// The error.
                source: io::Error,
            },
            /// Bytes on disk are not what the store wrote.
            #[error("{} at offset {offset}: {reason}", path.display())]
            Corrupt {
                /// The file.
                path: PathBuf,
                /// The byte offset.
                offset: u64,
                /// What is wrong.
                reason: String,
            },
            /// An earlier write or sync failed; the store refuses every further call.
            #[error("store failed closed after an earlier I/O error ({0})")]
            Poisoned(String),
            $($(#[$vmeta])* $variant $body,)*
        }

        impl From<Fault> for $name {
            fn from(f: Fault) -> Self {
                match f {
                    Fault::Io { op, path, source } => $name::Io { op, path, source },
                    Fault::Corrupt { path, offset, reason } => {
                        $name::Corrupt { path, offset, reason }
                    }
                    Fault::Poisoned(s) => $name::Poisoned(s),
                }
            }
        }
    };
}

op_error! {
    /// Opening or restoring a store.
    OpenError {
        /// The requested checkpoint has no manifest in the directory.
        #[error("no manifest for checkpoint {checkpoint_id} in {}", dir.display())]
        NoCheckpoint {
            /// The store directory.
            dir: PathBuf,
            /// The requested checkpoint.
            checkpoint_id: u64,
        },
        /// The configuration is unusable.
        #[error("invalid state store configuration: {0}")]
        Config(String),
    }
}

op_error! {
    /// Reading or writing an entry of a table (only the paths that reach the disk fail).
    AccessError {
        /// A value read from disk does not decode as the table's type.
        #[error("decode {what} of state '{state}': {reason}")]
        Decode {
            /// The state's name.
            state: String,
            /// Key, namespace or value.
            what: &'static str,
            /// The validation error.
            reason: String,
        },
    }
}

op_error! {
    /// Freezing or writing a checkpoint, or writing a savepoint.
    CheckpointError {
        /// Another checkpoint is still being written.
        #[error("checkpoint {requested} requested while checkpoint {running} is being written")]
        InProgress {
            /// The checkpoint being written.
            running: u64,
            /// The one requested.
            requested: u64,
        },
        /// Checkpoint ids must increase.
        #[error("checkpoint {requested} is not after the last checkpoint {last}")]
        NotIncreasing {
            /// The last checkpoint.
            last: u64,
            /// The one requested.
            requested: u64,
        },
        /// The frozen checkpoint belongs to another store or was superseded.
        #[error("checkpoint {0} was not frozen by this store or was superseded")]
        Stale(u64),
    }
}

op_error! {
    /// Writing evicted entries, compacting segments, or loading restored tables.
    MaintainError {
        /// A restored entry does not decode as its table's type (a background load).
        #[error("decode {what} of state '{state}': {reason}")]
        Decode {
            /// The state's name.
            state: String,
            /// Key, namespace or value.
            what: &'static str,
            /// The validation error.
            reason: String,
        },
    }
}

/// Shorthand for internal results.
pub type FaultResult<T> = Result<T, Fault>;
