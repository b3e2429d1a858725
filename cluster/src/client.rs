//! Requests to a coordinator, as the command line makes them: submit a job and wait for its
//! end (`sluice run JOB --coordinator ADDR`), list, cancel, savepoint. Each opens one
//! authenticated connection on an executor of its own thread.

use std::net::SocketAddr;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use sluice_net::Connection;

use crate::config::ClusterConfig;
use crate::protocol::{self, JobRow, Msg, NodeRow};

/// How long to wait for a coordinator's answer to a short request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client waiting for its job keeps trying to reach a coordinator it lost (one
/// that restarts recovers the job from its job store).
pub const RECONNECT_LIMIT: Duration = Duration::from_secs(60);

fn on_executor<T>(fut: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name("sluice-client")
        .io_memory(64 << 10)
        .make()
        .map_err(|e| format!("cannot start an executor: {e}"))?;
    executor.run(fut)
}

async fn connect(addr: SocketAddr, cluster: &ClusterConfig) -> Result<Connection, String> {
    sluice_net::connect(addr, &cluster.net())
        .await
        .map_err(|e| format!("cannot reach the coordinator at {addr}: {e}"))
}

async fn answer(conn: &Connection, addr: SocketAddr) -> Result<Msg, String> {
    let recv = async {
        protocol::recv_msg(conn)
            .await
            .map_err(|e| format!("the coordinator at {addr}: {e}"))
    };
    let timeout = async {
        glommio::timer::sleep(ANSWER_TIMEOUT).await;
        Err(format!(
            "the coordinator at {addr} did not answer within {}s",
            ANSWER_TIMEOUT.as_secs()
        ))
    };
    futures_lite::future::or(recv, timeout).await
}

async fn request(addr: SocketAddr, cluster: &ClusterConfig, msg: &Msg) -> Result<Msg, String> {
    let conn = connect(addr, cluster).await?;
    protocol::send(&conn, msg).map_err(|e| format!("the coordinator at {addr}: {e}"))?;
    let got = answer(&conn, addr).await;
    conn.close();
    got
}

/// Submits job `job` with options `args` and waits for its end: `Ok(summary)` when it
/// finished, `Err(reason)` when it failed or was cancelled. `on_status` gets the job's id
/// and its progress lines meanwhile. A lost coordinator connection is re-established (the
/// job watched by its id) for up to [`RECONNECT_LIMIT`]; after that, or when the coordinator
/// no longer knows the job, it is an error.
pub fn submit_and_wait(
    addr: SocketAddr,
    cluster: &ClusterConfig,
    job: &str,
    args: Vec<String>,
    workers: Option<u32>,
    mut on_status: impl FnMut(&str),
) -> Result<String, String> {
    on_executor(async move {
        let conn = connect(addr, cluster).await?;
        let submit = Msg::Submit {
            job: job.to_owned(),
            args,
            workers,
        };
        protocol::send(&conn, &submit).map_err(|e| format!("the coordinator at {addr}: {e}"))?;
        let job_id = match answer(&conn, addr).await? {
            Msg::Submitted { job_id } => job_id,
            Msg::Failed { message } | Msg::Refused { reason: message } => return Err(message),
            other => return Err(format!("unexpected answer from the coordinator: {other:?}")),
        };
        on_status(&format!("submitted {job_id}"));
        let mut conn = conn;
        loop {
            let msg = match protocol::recv_msg(&conn).await {
                Ok(msg) => msg,
                Err(e) => {
                    conn.close();
                    on_status(&format!(
                        "lost the coordinator at {addr} while {job_id} runs ({e}); \
                         reconnecting for up to {}s",
                        RECONNECT_LIMIT.as_secs()
                    ));
                    conn = rewatch(addr, cluster, &job_id).await?;
                    on_status(&format!("reconnected to the coordinator at {addr}"));
                    continue;
                }
            };
            match msg {
                Msg::Status { line } => on_status(&line),
                Msg::JobEnded {
                    ok: true, message, ..
                } => return Ok(message),
                Msg::JobEnded { message, .. } => return Err(message),
                other => tracing::debug!("ignoring {other:?}"),
            }
        }
    })
}

/// Reconnects to the coordinator at `addr` and watches job `job_id` again, retrying with a
/// backoff for up to [`RECONNECT_LIMIT`].
async fn rewatch(
    addr: SocketAddr,
    cluster: &ClusterConfig,
    job_id: &str,
) -> Result<Connection, String> {
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut last_error;
    loop {
        let attempt = async {
            let conn = connect(addr, cluster).await?;
            let watch = Msg::Watch {
                job_id: job_id.to_owned(),
            };
            protocol::send(&conn, &watch).map_err(|e| format!("the coordinator at {addr}: {e}"))?;
            match answer(&conn, addr).await? {
                Msg::Submitted { .. } => Ok(Ok(conn)),
                Msg::Failed { message } | Msg::Refused { reason: message } => Ok(Err(message)),
                other => Err(format!("unexpected answer from the coordinator: {other:?}")),
            }
        };
        match attempt.await {
            Ok(Ok(conn)) => return Ok(conn),
            // The coordinator is back but does not know the job: nothing to wait for.
            Ok(Err(message)) => {
                return Err(format!(
                    "the coordinator at {addr} came back without {job_id}: {message}"
                ));
            }
            Err(e) => last_error = e,
        }
        if started.elapsed() >= RECONNECT_LIMIT {
            return Err(format!(
                "lost the coordinator at {addr} while {job_id} runs, and it did not come back \
                 within {}s: {last_error}",
                RECONNECT_LIMIT.as_secs()
            ));
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The coordinator's jobs and worker nodes.
pub fn list(
    addr: SocketAddr,
    cluster: &ClusterConfig,
) -> Result<(Vec<JobRow>, Vec<NodeRow>), String> {
    on_executor(async move {
        match request(addr, cluster, &Msg::List).await? {
            Msg::Jobs { jobs, nodes } => Ok((jobs, nodes)),
            Msg::Failed { message } => Err(message),
            other => Err(format!("unexpected answer from the coordinator: {other:?}")),
        }
    })
}

/// Cancels job `job_id`; the coordinator's confirmation line.
pub fn cancel(addr: SocketAddr, cluster: &ClusterConfig, job_id: &str) -> Result<String, String> {
    let msg = Msg::CancelJob {
        job_id: job_id.to_owned(),
    };
    on_executor(async move { done(request(addr, cluster, &msg).await?) })
}

/// Takes a savepoint of job `job_id` (in a new directory under `dir`, or the coordinator's
/// default); the line naming it.
pub fn savepoint(
    addr: SocketAddr,
    cluster: &ClusterConfig,
    job_id: &str,
    dir: Option<String>,
) -> Result<String, String> {
    let msg = Msg::Savepoint {
        job_id: job_id.to_owned(),
        dir,
    };
    on_executor(async move { done(request(addr, cluster, &msg).await?) })
}

fn done(msg: Msg) -> Result<String, String> {
    match msg {
        Msg::Done { message } => Ok(message),
        Msg::Failed { message } | Msg::Refused { reason: message } => Err(message),
        other => Err(format!("unexpected answer from the coordinator: {other:?}")),
    }
}
