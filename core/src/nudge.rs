//! Wakes every worker's executor from another thread at a fixed interval, because glommio can
//! put an executor to sleep while it has tasks ready to run.
//!
//! The glommio bug (0.9.0, the newest on crates.io): the executor loop (`LocalExecutor::run` in
//! `executor/mod.rs`) parks when `run_task_queues` returns `false`. That function returns
//! `false` both when no task queue is active and when `need_preempt()` is already true at its
//! first check, before it ran anything. `need_preempt()` is true when the latency ring has an
//! unread completion: the preempt timer that the loop armed a moment earlier (in `poll_io`), an
//! eventfd wake from another executor, or a latency-sensitive I/O completion. In the second case
//! the loop reads the preempt timer's completion (it wakes no task), finds nothing to wake, and
//! sleeps in `io_uring_enter` with ready tasks in its queues. Only an expiring timer of its own
//! or a write to its eventfd from another thread wakes it. A worker whose tasks were all ready
//! (a source that yielded, a gate whose input waker had fired) has no timer pending. The other
//! worker waits for room in a full channel and writes nothing. Then the job stalls for good.
//! Arming the timer, then checking it, happen back to back. The timer fires in between only when
//! the thread loses its core for longer than the preempt period there: rare with glommio's
//! default 100 ms, every few seconds with 1 ms on a loaded machine. The community fork fixes it
//! (glommio/glommio pull request 53), but no release on crates.io has the fix.
//!
//! The workaround: an executor registers a waker of a task of its own (see [`nudged`]), and one
//! thread per process wakes every registered waker each [`NUDGE_INTERVAL`]. A wake from another
//! thread reaches glommio's foreign-wake queue and writes the executor's eventfd if it sleeps.
//! The loop then wakes up and runs its queues. So a stranded executor waits at most one interval
//! (longer only if it is stranded again at once). An executor that is busy pays for one queued
//! wake and one poll of that idle task per interval. An idle executor wakes once per interval.
//!
//! What it cannot cover: an executor stranded before it registered, which takes the preempt
//! timer to expire within the executor's first loop iterations (with the default timer, a loss
//! of the core for 100 ms at one exact point).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

/// How often every registered executor is woken: the longest a stranded executor waits. The
/// same order as the other polls of a waiting worker (a blocked send checks for cancellation
/// every 5 ms, a throttled source every 1 ms). An executor asleep with nothing to do pays one
/// wake-up per interval: about 150 µs of CPU on the 2-core development VM (eventfd write,
/// `io_uring_enter`, glommio's membarrier before it sleeps again), so 1.5% of a core per idle
/// worker. A busy executor pays one queued wake and one poll of an idle task.
pub const NUDGE_INTERVAL: Duration = Duration::from_millis(10);

struct Registry {
    next_id: u64,
    wakers: Vec<(u64, Waker)>,
    thread_started: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_id: 0,
    wakers: Vec::new(),
    thread_started: false,
});
/// Signalled when a waker is registered: the nudging thread waits on it while none is.
static REGISTERED: Condvar = Condvar::new();

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// While it lives, its executor is woken every [`NUDGE_INTERVAL`]. Drop it on the executor's
/// own thread (it drops the task's waker there).
#[must_use = "the executor is nudged only while this lives"]
pub struct Nudged {
    id: u64,
    alive: Rc<Cell<bool>>,
}

/// Registers the current executor for nudging, until the returned guard is dropped. It spawns
/// a task of its own that does nothing but lend its waker, so that the nudges poll no other
/// future (some glommio futures do not bear spurious polls). If the nudging thread cannot be
/// started, the executor runs without it: the next registration tries again.
pub async fn nudged() -> Nudged {
    let id = {
        let mut registry = registry();
        registry.next_id += 1;
        registry.next_id
    };
    let alive = Rc::new(Cell::new(true));
    let registered = Rc::new(Cell::new(false));
    let (task_alive, task_registered) = (alive.clone(), registered.clone());
    glommio::spawn_local(std::future::poll_fn(move |cx| {
        if task_alive.get() && !task_registered.replace(true) {
            register(id, cx.waker().clone());
        }
        Poll::<()>::Pending
    }))
    .detach();
    // The task runs before this one does again, so it is registered when this returns.
    while !registered.get() {
        futures_lite::future::yield_now().await;
    }
    Nudged { id, alive }
}

fn register(id: u64, waker: Waker) {
    let mut registry = registry();
    registry.wakers.push((id, waker));
    if !registry.thread_started {
        let spawned = std::thread::Builder::new()
            .name("sluice-nudge".into())
            .spawn(nudge_forever);
        registry.thread_started = spawned.is_ok();
    }
    REGISTERED.notify_one();
}

impl Drop for Nudged {
    fn drop(&mut self) {
        // The task stays pending, never woken again, until the executor drops it.
        self.alive.set(false);
        let waker = {
            let mut registry = registry();
            let at = registry.wakers.iter().position(|(id, _)| *id == self.id);
            at.map(|i| registry.wakers.swap_remove(i).1)
        };
        // Dropped here, on the executor's thread, after the lock is released.
        drop(waker);
    }
}

/// The nudging thread: wakes every registered executor each interval, and waits while none is.
fn nudge_forever() {
    loop {
        {
            let mut registry = registry();
            while registry.wakers.is_empty() {
                registry = REGISTERED
                    .wait(registry)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            for (_, waker) in &registry.wakers {
                waker.wake_by_ref();
            }
        }
        std::thread::sleep(NUDGE_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};

    /// Iterations of the yielding task.
    const ITERATIONS: u32 = 3000;
    /// The preempt timer while the yielding task's queue is active. Arming it and checking it
    /// are a few microseconds apart: at 50 µs the check finds it expired now and then (every 50
    /// iterations or so on the 2-core development machine, in a debug build), and after a nudge
    /// it is unlikely to strand the executor again at once. A timer of 10 µs or less strands it
    /// at nearly every iteration, nudged or not.
    const PREEMPT: Duration = Duration::from_micros(50);

    /// CPU work between yields: about 0.2 ms in a debug build. (No clock: only `clock.rs`
    /// reads it.)
    fn work() {
        let mut x = 0u64;
        for i in 0..20_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        std::hint::black_box(x);
    }

    /// Runs a task that works and yields (`yield_if_needed`) in a task queue whose latency
    /// requirement shrinks the preempt timer to [`PREEMPT`], so that the timer now and then
    /// expires between the executor loop arming it and `run_task_queues` checking it: glommio
    /// then parks the executor with the task still ready (see the module doc), and no timer or
    /// other thread would wake it. Returns whether the task finished within `patience`. The
    /// executor starts with the default 100 ms timer, so that its first iteration, before
    /// anything is registered, is not stranded.
    fn yielding_task_finishes(nudge: bool, patience: Duration) -> bool {
        let (done_tx, done) = mpsc::channel();
        let spawned = LocalExecutorBuilder::new(Placement::Unbound).spawn(move || async move {
            let _nudged = match nudge {
                true => Some(super::nudged().await),
                false => None,
            };
            let tq = glommio::executor().create_task_queue(
                Shares::default(),
                Latency::Matters(PREEMPT),
                "yielding",
            );
            let task = glommio::spawn_local_into(
                async {
                    for _ in 0..ITERATIONS {
                        work();
                        glommio::yield_if_needed().await;
                    }
                },
                tq,
            );
            task.expect("spawn into the task queue").await;
            let _ = done_tx.send(());
        });
        spawned.expect("start the executor");
        // A stranded executor's thread sleeps forever; it is left behind, detached.
        done.recv_timeout(patience).is_ok()
    }

    /// With the nudge, the task finishes although the executor is stranded again and again
    /// (up to 150 times a run here, each costing a nudge interval: 0.5 to 2 s instead of 0.6).
    /// The time limit only turns a hang into a failure.
    #[test]
    fn a_nudged_executor_is_never_stranded() {
        assert!(
            yielding_task_finishes(true, Duration::from_secs(60)),
            "the executor slept with a task ready to run"
        );
    }

    /// Pins the glommio bug that `nudge` works around: without the nudge, the same run hangs
    /// (in 14 of 15 runs here). Run it by hand after a glommio upgrade: if it keeps failing,
    /// the bug is fixed and the nudge can go. Ignored in CI: it leaves a thread asleep for
    /// good, and whether a run strands depends on the machine's timing.
    #[test]
    #[ignore]
    fn without_the_nudge_glommio_strands_the_executor() {
        assert!(!yielding_task_finishes(false, Duration::from_secs(10)));
    }
}
