//! Errors of the runtime. Each message is one line that names what failed; `sluice::Error` at
//! the API is this type.

use std::path::PathBuf;

/// Who is to blame for an error, for the coordinator's restart policy (later issues): a user
/// error stops the job, an internal or external one may restart it from a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorDomain {
    /// Bad input, a failing user function, a wrong configuration.
    User,
    /// The environment: I/O, memory limits, io_uring availability.
    External,
    /// A bug in Sluice.
    Internal,
}

/// The result type of the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every way a job can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a file failed.
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        /// What was being done ("open input", "read", "rename part file").
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An I/O operation not tied to one file (a socket, the terminal).
    #[error("{op}: {source}")]
    IoOther {
        /// What was being done.
        op: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Input bytes that do not decode.
    #[error("{path} at byte offset {offset}: {reason}", path = path.display())]
    Corrupt {
        /// The input.
        path: PathBuf,
        /// Where the bad bytes start.
        offset: u64,
        /// What is wrong with them.
        reason: String,
    },
    /// A user function returned an error.
    #[error("operator '{operator}' failed: {message}")]
    Operator {
        /// The operator's name.
        operator: String,
        /// The function's error, as one line.
        message: String,
    },
    /// User code panicked inside a stage.
    #[error("stage '{stage}' on worker {worker} panicked{location}: {message}")]
    Panic {
        /// The stage's name (its chained operators).
        stage: String,
        /// The worker it ran on.
        worker: usize,
        /// ` at file:line:col`, or empty when unknown.
        location: String,
        /// The panic message.
        message: String,
    },
    /// The runtime could not start every worker; nothing ran.
    #[error("cannot start worker {worker}: {reason}")]
    Startup {
        /// The worker that failed.
        worker: usize,
        /// Why, naming the likely cause (memlock, io_uring, CPU placement).
        reason: String,
    },
    /// A bad job definition or option.
    #[error("{0}")]
    Config(String),
    /// The state store failed (an I/O error, corrupt state on disk, a store that failed
    /// closed after an earlier error).
    #[error("{op}: {message}")]
    State {
        /// What was being done.
        op: &'static str,
        /// The store's one-line error.
        message: String,
    },
    /// The state of the checkpoint a job resumes from cannot be read back (missing or corrupt
    /// store files). With `--restore latest` the runtime falls back to an older checkpoint.
    #[error("cannot restore checkpoint {checkpoint_id}: {reason}")]
    Restore {
        /// The checkpoint.
        checkpoint_id: u64,
        /// What is wrong with it, as one line.
        reason: String,
    },
    /// A channel closed because another part of the job failed first. Never the root cause:
    /// the runtime reports the error that caused it instead.
    #[error("stage '{stage}' stopped: {what} closed before the end of input")]
    Disconnected {
        /// The stage that noticed.
        stage: String,
        /// "an upstream channel" or "a downstream channel".
        what: &'static str,
    },
    /// The job was cancelled (another worker failed, or the user asked).
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// The error's domain.
    pub fn domain(&self) -> ErrorDomain {
        match self {
            Error::Io { .. }
            | Error::IoOther { .. }
            | Error::Startup { .. }
            | Error::State { .. }
            | Error::Restore { .. } => ErrorDomain::External,
            Error::Corrupt { .. } | Error::Operator { .. } | Error::Panic { .. } => {
                ErrorDomain::User
            }
            Error::Config(_) => ErrorDomain::User,
            Error::Disconnected { .. } | Error::Cancelled => ErrorDomain::Internal,
        }
    }

    /// Whether this error is only a consequence of another failure (a closed channel, a
    /// cancellation), so that the runtime should report the other one.
    pub fn is_secondary(&self) -> bool {
        matches!(self, Error::Disconnected { .. } | Error::Cancelled)
    }

    /// Whether restarting the job from a checkpoint may get past this error: not for a bad
    /// configuration or an environment that cannot run the job at all.
    pub fn is_restartable(&self) -> bool {
        // Restoring the same unusable checkpoint again cannot succeed either.
        !matches!(
            self,
            Error::Config(_) | Error::Startup { .. } | Error::Restore { .. }
        )
    }

    /// Wraps a user function's error with the operator's name.
    pub fn operator(operator: &str, err: impl std::fmt::Display) -> Error {
        Error::Operator {
            operator: operator.to_owned(),
            message: crate::runtime::one_line(&err.to_string()),
        }
    }
}
