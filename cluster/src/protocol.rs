//! The control protocol: the messages between the coordinator, the worker nodes and the
//! clients, as rkyv archives in `Control::App` frames of authenticated `sluice-net`
//! connections (validated on arrival; a message that does not decode closes its connection).
//!
//! Every message about a job run names the run (`run`, a number the coordinator never
//! reuses), and every checkpoint message its checkpoint id: a message of another run — a late
//! acknowledgement from a run that was cancelled, a trigger for a run a node no longer has —
//! is rejected by its receiver (the coordinator counts and logs each: see
//! [`crate::coordinator`]). Run ids survive a coordinator restart (its job store), so a run of
//! the coordinator's predecessor is as stale as any run that is over.
//!
//! | from → to | message | when |
//! | --- | --- | --- |
//! | node → coordinator | `Register` | first, with its worker slots and data address |
//! | coordinator → node | `Registered` / `Refused` | the answer |
//! | coordinator → node | `Deploy` | its part of a run: job, options, workers, restore |
//! | node → coordinator | `Prepared` | part prepared, its workers' data addresses |
//! | coordinator → node | `Start` | every part prepared: every worker's address |
//! | coordinator → node | `Trigger` | checkpoint (or savepoint) `n` |
//! | node → coordinator | `Ack`, `Finished` | a stage instance's snapshot is durable / it ended |
//! | node → coordinator | `Declined` | a stage instance's snapshot failed |
//! | coordinator → node | `Complete` | checkpoint `n` complete: commit its output |
//! | node → coordinator | `RunEnded` | the part's workers all ended, with the outcome |
//! | coordinator → node | `Commit` / `Cancel` | the run succeeded everywhere / stop it |
//! | node → coordinator | `Committed` | the part's output is published |
//! | client → coordinator | `Submit`, `Watch`, `List`, `CancelJob`, `Savepoint` | requests |
//! | coordinator → client | `Submitted`, `Status`, `JobEnded`, `Jobs`, `Done`, `Failed` | answers |
//!
//! Liveness: both ends of a node's connection send `Control::Heartbeat` every
//! [`HEARTBEAT_INTERVAL`]; a side that hears nothing for the heartbeat timeout drops the
//! connection (the coordinator then fails the node's runs over; the node cancels its parts).

use std::time::Duration;

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};
use sluice_net::wire::Control;
use sluice_net::{Connection, NetError};

/// How often each side of a node's connection says it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// Silence after which a peer counts as lost, unless configured otherwise.
pub const HEARTBEAT_TIMEOUT_DEFAULT: Duration = Duration::from_millis(3000);

/// A source split's state in an acknowledgement (core's `SplitState`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireSplit {
    /// The split, as its source encodes it.
    pub split: Vec<u8>,
    /// Where to resume reading it.
    pub position: Option<u64>,
    /// Whether it was read to its end.
    pub done: bool,
}

/// One worker node in a `List` answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Its name.
    pub name: String,
    /// Where its connection to the coordinator comes from.
    pub addr: String,
    /// Its worker slots.
    pub slots: u32,
    /// Slots given to runs.
    pub used: u32,
}

/// A node's part of a run.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Deploy {
    /// The run.
    pub run: u64,
    /// The job's id.
    pub job_id: String,
    /// The registered job's name.
    pub job: String,
    /// Its options, as on the command line after `run JOB` (paths made absolute).
    pub args: Vec<String>,
    /// Workers of the whole run.
    pub workers: u32,
    /// The global index of this node's first worker.
    pub first_worker: u32,
    /// This node's workers in the run.
    pub local_workers: u32,
    /// The job's key groups.
    pub key_groups_max: u32,
    /// The checkpoint or savepoint directory the run resumes from.
    pub restore: Option<String>,
    /// Where the job's checkpoints (and its state) live, if it takes any.
    pub checkpoint_dir: Option<String>,
}

/// How a node's part of a run ended.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// Whether every local worker succeeded.
    pub ok: bool,
    /// The error, one line (empty when ok).
    pub message: String,
    /// Whether the error is only a consequence of another failure (a closed channel, a
    /// cancellation).
    pub secondary: bool,
    /// Whether restarting from a checkpoint may get past it.
    pub restartable: bool,
    /// Records the local sources read.
    pub records_in: u64,
    /// Bytes the local sources read.
    pub bytes_in: u64,
    /// From the start to the last local worker's end, in ms.
    pub elapsed_ms: u64,
}

/// One job in a `List` answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// The job's id.
    pub id: String,
    /// The registered job's name.
    pub name: String,
    /// `running`, `waiting`, `finished`, `failed: …`, `cancelled`, …
    pub state: String,
    /// Workers of its current (or last) run.
    pub workers: u32,
    /// Restarts after failures.
    pub restarts: u32,
    /// Its newest complete checkpoint (0: none).
    pub last_checkpoint: u64,
}

pub use messages::{ArchivedMsg, Msg};

/// The message enum, in a module of its own: rkyv derives its archived and resolver forms
/// beside it without documentation.
#[allow(missing_docs)]
mod messages {
    use super::{Deploy, JobRow, NodeRow, RunOutcome, WireSplit};
    use rkyv::{Archive, Deserialize, Serialize};

    /// A control-plane message.
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub enum Msg {
        /// Node → coordinator: a worker node joins.
        Register {
            /// Its name, for logs.
            node: String,
            /// How many workers it runs at most.
            slots: u32,
        },
        /// Coordinator → node: welcome.
        Registered {
            /// Its id at the coordinator.
            node_id: u64,
        },
        /// Coordinator → node or client: refused, and why.
        Refused {
            /// Why.
            reason: String,
        },
        /// Coordinator → node: run a part of a job.
        Deploy(Deploy),
        /// Node → coordinator: its part of `run` is prepared; its workers listen here.
        Prepared {
            /// The run.
            run: u64,
            /// Its workers' data addresses, in worker order.
            addrs: Vec<String>,
        },
        /// Coordinator → node: every part is prepared: connect to these and run.
        Start {
            /// The run.
            run: u64,
            /// Every worker's data address, in global worker order.
            endpoints: Vec<String>,
        },
        /// Coordinator → node: inject checkpoint barrier `checkpoint_id`.
        Trigger {
            /// The run.
            run: u64,
            /// The checkpoint.
            checkpoint_id: u64,
            /// When it was triggered (ms since the epoch).
            timestamp_ms: u64,
            /// Set for a savepoint: where the stages write their state.
            savepoint_dir: Option<String>,
        },
        /// Node → coordinator: a stage instance runs (its state is restored); checkpoints are
        /// triggered once every instance does.
        Running {
            /// The run.
            run: u64,
            /// The stage.
            stage: u32,
            /// The global worker.
            worker: u32,
        },
        /// Node → coordinator: a stage instance's snapshot of a checkpoint is durable.
        Ack {
            /// The run.
            run: u64,
            /// The checkpoint.
            checkpoint_id: u64,
            /// The stage.
            stage: u32,
            /// The global worker.
            worker: u32,
            /// Its sources' splits.
            splits: Vec<WireSplit>,
            /// Where its state went.
            state: Option<String>,
            /// Its pause at the barrier, in µs.
            sync_us: u64,
            /// Of that, its freeze of the dirty state, in µs.
            freeze_us: u64,
            /// The CPU time its thread spent in the pause, in µs.
            sync_cpu_us: u64,
            /// From its barrier to the acknowledgement, in µs.
            duration_us: u64,
            /// How long its inputs were aligning, in µs.
            align_us: u64,
        },
        /// Node → coordinator: a stage instance could not write its snapshot of a
        /// checkpoint (the checkpoint cannot complete, the run fails).
        Declined {
            /// The run.
            run: u64,
            /// The checkpoint.
            checkpoint_id: u64,
            /// The stage.
            stage: u32,
            /// The global worker.
            worker: u32,
            /// Why, one line.
            reason: String,
        },
        /// Node → coordinator: a stage instance ended.
        Finished {
            /// The run.
            run: u64,
            /// The stage.
            stage: u32,
            /// The global worker.
            worker: u32,
            /// Its sources' splits, all read.
            splits: Vec<WireSplit>,
        },
        /// Coordinator → node: checkpoint `checkpoint_id` is complete.
        Complete {
            /// The run.
            run: u64,
            /// The checkpoint.
            checkpoint_id: u64,
        },
        /// Node → coordinator: every local worker of the part ended.
        RunEnded {
            /// The run.
            run: u64,
            /// How.
            outcome: RunOutcome,
        },
        /// Coordinator → node: the run succeeded everywhere: publish the output.
        Commit {
            /// The run.
            run: u64,
        },
        /// Node → coordinator: output published (or why not).
        Committed {
            /// The run.
            run: u64,
            /// The error, if publishing failed.
            error: Option<String>,
        },
        /// Coordinator → node: stop the part; with `abort`, remove its uncommitted output.
        Cancel {
            /// The run.
            run: u64,
            /// Whether to remove uncommitted output (the job will not resume).
            abort: bool,
        },
        /// Client → coordinator: run a job and report its end on this connection.
        Submit {
            /// The registered job's name.
            job: String,
            /// Its options (paths made absolute by the client).
            args: Vec<String>,
            /// Workers wanted (default: every free slot).
            workers: Option<u32>,
        },
        /// Coordinator → client: accepted, under this id.
        Submitted {
            /// The job's id.
            job_id: String,
        },
        /// Coordinator → client: a line about the job's progress (deployed, restarted, ...).
        Status {
            /// The line.
            line: String,
        },
        /// Coordinator → client: the job ended.
        JobEnded {
            /// The job's id.
            job_id: String,
            /// Whether it finished successfully.
            ok: bool,
            /// A summary, or the reason it failed.
            message: String,
        },
        /// Client → coordinator: the jobs, please.
        List,
        /// Coordinator → client: the jobs, and the worker nodes.
        Jobs {
            /// One row per job.
            jobs: Vec<JobRow>,
            /// One row per registered worker node.
            nodes: Vec<NodeRow>,
        },
        /// Client → coordinator: cancel a job.
        CancelJob {
            /// The job's id.
            job_id: String,
        },
        /// Client → coordinator: take a savepoint of a running job (it goes on).
        Savepoint {
            /// The job's id.
            job_id: String,
            /// The directory to create the savepoint in (default: the coordinator's).
            dir: Option<String>,
        },
        /// Coordinator → client: done, with a line to show.
        Done {
            /// The line.
            message: String,
        },
        /// Coordinator → client: the request failed.
        Failed {
            /// Why.
            message: String,
        },
        /// Client → coordinator: report job `job_id`'s progress and end on this connection
        /// (a client that lost its coordinator while it waited for the job); answered with
        /// `Submitted` (then `Status` lines and `JobEnded`, as for a submission), or `Failed`.
        Watch {
            /// The job's id.
            job_id: String,
        },
    }
}

/// Why a message could not be sent or received.
#[derive(Debug)]
pub enum ProtocolError {
    /// The connection failed or closed.
    Net(NetError),
    /// The peer closed the connection cleanly.
    Closed,
    /// A message that does not decode, or that is not allowed here.
    Invalid(String),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::Net(e) => write!(f, "{e}"),
            ProtocolError::Closed => write!(f, "the connection closed"),
            ProtocolError::Invalid(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Queues `msg` on `conn`.
pub fn send(conn: &Connection, msg: &Msg) -> Result<(), ProtocolError> {
    let bytes = rkyv::to_bytes::<rancor::Error>(msg)
        .map_err(|e| ProtocolError::Invalid(format!("encode a control message: {e}")))?;
    conn.send_control(&Control::App {
        bytes: bytes.to_vec(),
    })
    .map_err(ProtocolError::Net)
}

/// Decodes a message's bytes (validated).
pub fn decode(bytes: &[u8]) -> Result<Msg, ProtocolError> {
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<Msg, rancor::Error>(&aligned)
        .map_err(|e| ProtocolError::Invalid(format!("a control message that does not decode: {e}")))
}

/// What a connection delivered: a message, or a heartbeat.
#[derive(Debug)]
pub enum Incoming {
    /// A protocol message.
    Msg(Msg),
    /// The peer is alive.
    Heartbeat,
}

/// The next message or heartbeat on `conn`.
pub async fn recv(conn: &Connection) -> Result<Incoming, ProtocolError> {
    match conn.recv_control().await {
        Ok(Some(Control::App { bytes })) => decode(&bytes).map(Incoming::Msg),
        Ok(Some(Control::Heartbeat { .. })) => Ok(Incoming::Heartbeat),
        Ok(Some(Control::Goodbye { reason })) => Err(ProtocolError::Invalid(format!(
            "the peer said goodbye: {reason}"
        ))),
        Ok(Some(other)) => Err(ProtocolError::Invalid(format!(
            "an unexpected control message: {other:?}"
        ))),
        Ok(None) => Err(ProtocolError::Closed),
        Err(e) => Err(ProtocolError::Net(e)),
    }
}

/// The next message on `conn`, skipping heartbeats.
pub async fn recv_msg(conn: &Connection) -> Result<Msg, ProtocolError> {
    loop {
        if let Incoming::Msg(m) = recv(conn).await? {
            return Ok(m);
        }
    }
}

/// Queues a heartbeat on `conn`.
pub fn heartbeat(conn: &Connection, sequence: u64) -> Result<(), ProtocolError> {
    conn.send_control(&Control::Heartbeat { sequence })
        .map_err(ProtocolError::Net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let msgs = vec![
            Msg::Register {
                node: "n1".into(),
                slots: 2,
            },
            Msg::Deploy(Deploy {
                run: 3,
                job_id: "job-1".into(),
                job: "wordcount".into(),
                args: vec!["--input".into(), "/x".into()],
                workers: 4,
                first_worker: 2,
                local_workers: 2,
                key_groups_max: 128,
                restore: Some("/c/chk-3".into()),
                checkpoint_dir: None,
            }),
            Msg::Running {
                run: 3,
                stage: 1,
                worker: 3,
            },
            Msg::Ack {
                run: 3,
                checkpoint_id: 9,
                stage: 1,
                worker: 3,
                splits: vec![WireSplit {
                    split: vec![1, 2],
                    position: Some(5),
                    done: false,
                }],
                state: None,
                sync_us: 1,
                freeze_us: 4,
                sync_cpu_us: 5,
                duration_us: 2,
                align_us: 3,
            },
            Msg::Watch {
                job_id: "job-0042".into(),
            },
            Msg::Declined {
                run: 3,
                checkpoint_id: 9,
                stage: 2,
                worker: 0,
                reason: "disk full".into(),
            },
            Msg::Jobs {
                jobs: vec![JobRow {
                    id: "job-1".into(),
                    name: "wordcount".into(),
                    state: "running".into(),
                    workers: 4,
                    restarts: 0,
                    last_checkpoint: 7,
                }],
                nodes: vec![NodeRow {
                    name: "w1".into(),
                    addr: "127.0.0.2:5000".into(),
                    slots: 2,
                    used: 1,
                }],
            },
        ];
        for msg in msgs {
            let bytes = rkyv::to_bytes::<rancor::Error>(&msg).unwrap();
            assert_eq!(decode(&bytes).unwrap(), msg);
            for cut in 0..bytes.len() {
                let _ = decode(&bytes[..cut]);
            }
            let mut bad = bytes.to_vec();
            for i in 0..bad.len() {
                bad[i] ^= 0x5a;
                let _ = decode(&bad);
                bad[i] ^= 0x5a;
            }
        }
    }
}
