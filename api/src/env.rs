//! [`Env`]: where a job is built and executed.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::chain::Identity;
use sluice_core::exchange::AnyEdge;
use sluice_core::graph::{JobGraph, StageFactory};
use sluice_core::metrics::Progress;
use std::sync::atomic::AtomicBool;

use sluice_core::checkpoint::CheckpointConfig;
use sluice_core::runtime::{self, JobReport, RestoreFrom, RuntimeConfig};
use sluice_core::source::Source;
use sluice_core::{Error, Result};

use crate::sources::{CollectionSource, LineMapper, SocketTextSource, TextFileSource};
use crate::stream::{DataStream, SourceHead};
use sluice_core::io::GlommioDisk;

type ProgressFn = Box<dyn FnMut(Progress, Duration)>;

pub(crate) struct Builder {
    pub(crate) stages: Vec<Box<dyn StageFactory>>,
    /// Every edge, and whether a stage reads it yet.
    pub(crate) edges: Vec<(Arc<dyn AnyEdge>, Rc<RefCell<bool>>)>,
    pub(crate) config: RuntimeConfig,
    progress: Option<ProgressFn>,
}

/// The execution environment: sources start here, and [`Env::execute`] runs everything built
/// from them on this machine, one worker per core.
///
/// An `Env` is cheap to clone; clones build the same job.
#[derive(Clone)]
pub struct Env {
    pub(crate) inner: Rc<RefCell<Builder>>,
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl Env {
    /// An environment with one worker per available core, pinned.
    pub fn new() -> Env {
        Env::with_config(RuntimeConfig::default())
    }

    /// An environment with an explicit configuration.
    pub fn with_config(config: RuntimeConfig) -> Env {
        let builder = Builder {
            stages: Vec::new(),
            edges: Vec::new(),
            config,
            progress: None,
        };
        Env {
            inner: Rc::new(RefCell::new(builder)),
        }
    }

    /// Sets the number of workers. More workers than cores run unpinned.
    pub fn set_workers(&self, workers: usize) -> &Self {
        self.inner.borrow_mut().config.workers = workers;
        self
    }

    /// The number of workers jobs will run on.
    pub fn workers(&self) -> usize {
        self.inner.borrow().config.workers
    }

    /// Sets the number of key groups (the most workers a keyed state can be spread over).
    pub fn set_key_groups_max(&self, key_groups_max: u32) -> &Self {
        self.inner.borrow_mut().config.key_groups_max = Some(key_groups_max);
        self
    }

    /// Takes a checkpoint into `dir` every `interval`: with replayable sources and the
    /// two-phase-commit file sink, the job's output is exactly once, and a failure restarts it
    /// from its latest checkpoint (see [`set_restart_strategy`](Self::set_restart_strategy)).
    pub fn enable_checkpointing(&self, dir: impl Into<PathBuf>, interval: Duration) -> &Self {
        self.inner.borrow_mut().config.checkpoints = Some(CheckpointConfig::new(dir, interval));
        self
    }

    /// Sets every checkpoint option (retention, timeout, minimum pause).
    pub fn set_checkpoint_config(&self, config: CheckpointConfig) -> &Self {
        self.inner.borrow_mut().config.checkpoints = Some(config);
        self
    }

    /// Resumes the job from a checkpoint or savepoint.
    pub fn restore_from(&self, from: RestoreFrom) -> &Self {
        self.inner.borrow_mut().config.restore = Some(from);
        self
    }

    /// After a failure (with checkpoints), restarts the job up to `attempts` times, each after
    /// `delay` (a fixed-delay restart strategy).
    pub fn set_restart_strategy(&self, attempts: u32, delay: Duration) -> &Self {
        let mut b = self.inner.borrow_mut();
        b.config.restart_attempts = attempts;
        b.config.restart_delay = delay;
        self
    }

    /// Sets how many bytes of keyed state each stateful stage keeps in memory per worker
    /// before its store evicts cold entries to disk (default 512 MiB).
    pub fn set_state_budget_bytes(&self, bytes: usize) -> &Self {
        self.inner.borrow_mut().config.state_budget_bytes = bytes.max(1);
        self
    }

    /// Sets what a restore loads into memory (default: [`StateLoading::Background`]).
    ///
    /// [`StateLoading::Background`]: crate::StateLoading::Background
    pub fn set_state_loading(&self, loading: crate::StateLoading) -> &Self {
        self.inner.borrow_mut().config.state_loading = loading;
        self
    }

    /// Throttles every source to `records_per_second` in total over its workers.
    pub fn set_source_rate(&self, records_per_second: f64) -> &Self {
        self.inner.borrow_mut().config.source_rate = Some(records_per_second);
        self
    }

    /// When `stop` is raised (by a signal handler, say), the job stops with a savepoint in a
    /// new directory under `dir`: sources stop, a last barrier passes, sinks commit, and
    /// [`execute`](Self::execute) returns with the savepoint's path in the report.
    pub fn stop_with_savepoint_on(&self, stop: Arc<AtomicBool>, dir: impl Into<PathBuf>) -> &Self {
        let mut b = self.inner.borrow_mut();
        b.config.stop = Some(stop);
        b.config.savepoint_dir = Some(dir.into());
        self
    }

    /// Calls `f` with the job's progress while it runs (every 250 ms) and once at the end.
    pub fn on_progress(&self, f: impl FnMut(Progress, Duration) + 'static) -> &Self {
        self.inner.borrow_mut().progress = Some(Box::new(f));
        self
    }

    /// A stream from any [`Source`].
    pub fn from_source<S: Source>(&self, source: S) -> DataStream<SourceHead<S>, Identity> {
        DataStream::new(self.clone(), SourceHead(source), Identity)
    }

    /// A bounded stream of the items of a collection, split evenly across workers.
    ///
    /// ```
    /// let env = sluice::Env::new();
    /// let out = env.from_iter(1..=4u64).map(|x| x * 10).collect();
    /// env.execute("doc").unwrap();
    /// let mut got = out.take();
    /// got.sort();
    /// assert_eq!(got, vec![10, 20, 30, 40]);
    /// ```
    pub fn from_iter<T, I>(&self, items: I) -> DataStream<SourceHead<CollectionSource<T>>, Identity>
    where
        T: Clone + Send + Sync + 'static,
        I: IntoIterator<Item = T>,
    {
        self.from_source(CollectionSource::new(items))
    }

    /// A bounded stream of the lines of a text file, or of every file in a directory whose
    /// name starts with neither `.` nor `_` (subdirectories are not read; a pipe or device is
    /// an error). Files are split into byte ranges across workers;
    /// each line is read by exactly one worker. Lines end at `\n`; a `\r` before it is removed.
    /// Invalid UTF-8 fails the job with an error naming the file and byte offset.
    pub fn read_text_file(
        &self,
        path: impl Into<PathBuf>,
    ) -> DataStream<SourceHead<TextFileSource>, Identity> {
        self.from_source(TextFileSource::new(path))
    }

    /// A bounded stream of the records `mapper` makes from the lines of a text file or
    /// directory (see [`read_text_file`](Self::read_text_file)): the mapper parses each line in
    /// place, without allocating it, and may give the record its event time.
    pub fn read_text_file_with<M: LineMapper>(
        &self,
        path: impl Into<PathBuf>,
        mapper: M,
    ) -> DataStream<SourceHead<TextFileSource<GlommioDisk, M>>, Identity> {
        self.from_source(TextFileSource::with_mapper(path, mapper))
    }

    /// A stream of the lines read from a TCP socket at `addr` (`host:port`), read by one
    /// worker. It ends when the peer closes the connection. At most once: nothing read from a
    /// socket can be replayed.
    pub fn socket_text_stream(
        &self,
        addr: impl Into<String>,
    ) -> DataStream<SourceHead<SocketTextSource>, Identity> {
        self.from_source(SocketTextSource::new(addr))
    }

    pub(crate) fn add_stage(&self, stage: Box<dyn StageFactory>) {
        self.inner.borrow_mut().stages.push(stage);
    }

    pub(crate) fn add_edge(&self, edge: Arc<dyn AnyEdge>) -> Rc<RefCell<bool>> {
        let consumed = Rc::new(RefCell::new(false));
        self.inner.borrow_mut().edges.push((edge, consumed.clone()));
        consumed
    }

    /// The physical plan of the job built so far, one stage per line.
    pub fn explain(&self) -> String {
        sluice_core::graph::describe_stages(&self.inner.borrow().stages)
    }

    /// Takes the job built so far out of the environment (clearing the builder), with the
    /// configuration it would run with: for running it elsewhere than [`execute`](Self::execute)
    /// does — as one node's part of a job on a cluster, say. Fails like `execute` on a job
    /// that is not complete.
    pub fn take_job(&self, name: &str) -> Result<(JobGraph, RuntimeConfig)> {
        let mut b = self.inner.borrow_mut();
        if let Some((_, _)) = b.edges.iter().find(|(_, consumed)| !*consumed.borrow()) {
            return Err(Error::Config(format!(
                "job '{name}': a stream after an exchange is never consumed; \
                 end it in a sink or an aggregation"
            )));
        }
        if b.stages.is_empty() {
            return Err(Error::Config(format!("job '{name}' has no sink")));
        }
        let graph = JobGraph {
            stages: std::mem::take(&mut b.stages),
            edges: b.edges.drain(..).map(|(e, _)| e).collect(),
        };
        let mut config = b.config.clone();
        config.job_name = name.to_owned();
        Ok((graph, config))
    }

    /// Runs the job built so far to completion, on this machine, and clears the builder so
    /// the environment can build another job. Returns when every bounded input has been
    /// processed and every sink has finished; fails with the first root-cause error.
    pub fn execute(&self, name: &str) -> Result<JobReport> {
        let (graph, config) = self.take_job(name)?;
        let mut progress = self.inner.borrow_mut().progress.take();
        tracing::debug!(job = name, plan = %graph.describe(), "executing");
        runtime::execute(graph, &config, |p, elapsed| {
            if let Some(f) = progress.as_mut() {
                f(p, elapsed);
            }
        })
    }
}
