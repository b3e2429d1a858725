//! # Sluice
//!
//! The DataStream API of Sluice, a thread-per-core stream processor: build a job from
//! sources, transformations, keyed aggregations and sinks, then run it on every core of this
//! machine with [`Env::execute`].
//!
//! ```no_run
//! use sluice::prelude::*;
//!
//! let env = Env::new();
//! env.read_text_file("input.txt")
//!     .flat_map(|line: String| {
//!         line.split_whitespace().map(|w| (w.to_lowercase(), 1u64)).collect::<Vec<_>>()
//!     })
//!     .key_by(|(word, _): &(String, u64)| word.clone())
//!     .emit_final()
//!     .sum(|(_, n): &mut (String, u64)| n)
//!     .print();
//! env.execute("wordcount").unwrap();
//! ```
//!
//! Every operator runs on every worker. Operators between exchanges (`key_by`, `rebalance`,
//! `broadcast`, `union`) are fused into one monomorphised call chain per worker; records cross
//! an exchange in batches, moved between cores without copying.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
// Stream types spell out their operator chains: that is what makes a chain one monomorphised
// call path. Users rarely name them; inference does.
#![allow(clippy::type_complexity)]

#[cfg(feature = "cli")]
pub mod cli;
mod env;
mod sinks;
mod sources;
mod stream;
pub mod testing;
pub mod text;
mod window;

pub use env::Env;
pub use sinks::{CollectHandle, CollectSink, PrintSink, TextFileSink};
pub use sources::{
    CollectionSource, LINE_BYTES_MAX, LineAt, LineMapper, Lines, SocketTextSource, TextFileSource,
    TextSplit,
};
pub use stream::{
    BuildStage, DataStream, FinalKeyedStream, FinalPairKeyedStream, GateHead, Head, KeyedStream,
    PairKeyedStream, SourceHead,
};

pub use sluice_core::chain::Identity;
pub use sluice_core::checkpoint::CheckpointConfig;
pub use sluice_core::checkpoint::coordinator::{CheckpointStats, StagePauses};
pub use sluice_core::context::{OutputTag, SideOutput};
pub use sluice_core::join::{Either, JoinType};
pub use sluice_core::keyed::{AggregateFunction, Emit};
pub use sluice_core::keyed_state::{
    AggregatingState, KeyedState, ListState, MapState, ReducingState, StateTtlConfig,
    TtlDeclarations, ValueState,
};
pub use sluice_core::metrics::Progress;
pub use sluice_core::process::{KeyedProcessFunction, ProcessContext, TimeDomain};
pub use sluice_core::runtime::{JobReport, RestoreFrom, RuntimeConfig, available_cpus};
pub use sluice_core::sink::{Sink, SinkContext, SinkWriter};
pub use sluice_core::source::{ReadPosition, ReadStatus, Source, SourceContext, SourceReader};
pub use sluice_core::state::StateLoading;
pub use sluice_core::time::{
    BoundedOutOfOrderness, TimestampAssigner, WatermarkGenerator, WatermarkStrategy,
};
pub use sluice_core::window::{
    CountTrigger, EventTimeTrigger, ProcessingTimeTrigger, PurgingTrigger, TimeWindow, Trigger,
    TriggerContext, TriggerResult, WindowAssigner, WindowFunction, WindowOutput,
};
pub use sluice_core::{
    BATCH_RECORDS_MAX, Batch, Error, ErrorDomain, Key, NO_TIMESTAMP, Result, Timestamp, Watermark,
    WatermarkStatus,
};
pub use window::{
    JoinBuilder, JoinWhere, JoinedStreams, WindowJoinPipe, WindowResult, WindowedStream,
};

/// What keyed state holds (keys, reduced values, accumulators, buffered records): a type
/// the state store writes as an rkyv archive. The primitives, `String`, `CompactString`,
/// `Vec`, `Option`, tuples and arrays of such types are; a type of your own derives
/// `rkyv::Archive`, `rkyv::Serialize` and `rkyv::Deserialize` (re-exported as
/// [`rkyv`](crate::rkyv)).
pub use sluice_core::state::StateCodec;

/// rkyv, the serialization framework of state and of records between nodes, for its derives.
pub use rkyv;

/// Lets records of a type cross nodes when a job runs on a cluster (see
/// [`sluice_core::remote`]): for record types a job moves through an exchange that is not a
/// keyed aggregation (whose keys and values are registered already). Records inside one
/// process are never serialized.
pub use sluice_core::remote::register_wire_type;

/// Small-string type for keys such as words: strings of up to 24 bytes live inline, so a
/// record keyed by a short word needs no heap allocation.
pub use compact_str::CompactString;

/// The operator types that make up a stream's type, for code that names stream types (a
/// function returning a pipeline, say). Most code never needs them: inference does.
pub mod ops {
    pub use sluice_core::chain::{
        Filter, FlatMap, FlatMapInto, Flatten, Identity, Map, MapWithTimestamp, Pipe, Then, TryMap,
    };
    pub use sluice_core::join::{BoundedJoin, IntervalJoin, WindowJoin};
    pub use sluice_core::keyed::{Aggregate, Combine, CombineAgg, MergeAgg, Reduce, ReducePairs};
    pub use sluice_core::process::KeyedProcess;
    pub use sluice_core::time::AssignTimestamps;
    pub use sluice_core::window::{
        AggregateWindow, Combined, DefaultTrigger, ProcessWindow, ReduceWindow, WindowCombiner,
        WindowOperator,
    };
}

/// The names most jobs need.
pub mod prelude {
    pub use crate::{
        AggregateFunction, CollectHandle, CompactString, DataStream, Env, Key, KeyedStream,
        OutputTag, ProcessContext, Sink, SinkWriter, Source, SourceReader, WatermarkStrategy,
        WindowAssigner,
    };
}
