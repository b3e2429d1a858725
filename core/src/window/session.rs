//! Event-time session windows: per key, the sessions `[first record, last record + gap)`,
//! merged as records arrive.
//!
//! A record's window `[ts, ts + gap)` merges with every session of its key it overlaps, so a
//! record can bridge two sessions into one. Each key has at most one pending timer, at the
//! earliest instant one of its sessions must fire (or be dropped after the allowed lateness);
//! extending a session — the common case — moves nothing, and when the timer comes due the
//! key's sessions are checked and the timer re-armed for the next instant. A timer that an
//! earlier one replaced stays set and is skipped when it comes up.
//!
//! Records usually arrive already merged: a
//! [`WindowCombiner`](crate::window::WindowCombiner) on the sending worker merges
//! each key's records into local sessions, which merge here as their records would have (see
//! [`combine`](crate::window::combine)).
//!
//! State: each key's sessions in a store table, the timers in the store's timer set, and the
//! operator's watermark written at each barrier.

use std::marker::PhantomData;

use crate::chain::Collector;
use crate::context::{OperatorContext, SideOutput};
use crate::element::{CheckpointBarrier, Timestamp, Watermark, is_event_time};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::state::{OpMeta, OpTable, OpTimers};
use crate::window::combine::Combined;
use crate::window::function::WindowFunction;
use crate::window::{TimeWindow, no_timestamp_error};

/// The session window operator's pipe.
pub struct SessionWindow<W, K, T> {
    pub(crate) function: W,
    pub(crate) gap: i64,
    pub(crate) allowed_lateness: i64,
    pub(crate) late_tag: Option<u64>,
    pub(crate) _p: PhantomData<fn(K, T)>,
}

impl<W: Clone, K, T> Clone for SessionWindow<W, K, T> {
    fn clone(&self) -> Self {
        SessionWindow {
            function: self.function.clone(),
            gap: self.gap,
            allowed_lateness: self.allowed_lateness,
            late_tag: self.late_tag,
            _p: PhantomData,
        }
    }
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Session<A> {
    window: TimeWindow,
    acc: A,
    fired: bool,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct KeySessions<A> {
    /// Disjoint, in no particular order.
    sessions: Vec<Session<A>>,
    /// The key's pending timer, if any.
    timer: Option<i64>,
}

/// The instantiated session window operator.
pub struct SessionWindowOp<W: WindowFunction<K, T>, K, T, C> {
    function: W,
    gap: i64,
    lateness: i64,
    keys: OpTable<(), K, KeySessions<W::Acc>>,
    timers: OpTimers<K, ()>,
    progress: OpMeta<i64>,
    watermark: Watermark,
    /// Restoring the operator's progress failed: the first call reports it.
    broken: Option<Error>,
    late: SideOutput<(K, T)>,
    ctx: OperatorContext,
    out: Vec<W::Out>,
    next: C,
    _t: PhantomData<fn(T)>,
}

impl<W, K, T> SessionWindow<W, K, T>
where
    W: WindowFunction<K, T>,
{
    pub(crate) fn instantiate<C>(
        self,
        next: C,
        ctx: &OperatorContext,
    ) -> SessionWindowOp<W, K, T, C>
    where
        K: Key,
        T: 'static,
    {
        let late = match self.late_tag {
            Some(tag) => ctx.side_output(tag),
            None => SideOutput::discard(),
        };
        let mut progress = OpMeta::register(ctx, "progress");
        let (watermark, broken) = match progress.restored() {
            // The instances whose key groups this one took saw the same watermarks.
            Ok(restored) => (
                restored.into_iter().min().map_or(Watermark::MIN, Watermark),
                None,
            ),
            Err(e) => (Watermark::MIN, Some(e)),
        };
        SessionWindowOp {
            function: self.function,
            gap: self.gap,
            lateness: self.allowed_lateness,
            keys: OpTable::register(ctx, "sessions"),
            timers: OpTimers::register(ctx, "timers"),
            progress,
            watermark,
            broken,
            late,
            ctx: ctx.clone(),
            out: Vec::new(),
            next,
            _t: PhantomData,
        }
    }
}

/// What joins a key's sessions: a record, or a combiner's local session.
enum Incoming<T, A> {
    Record(T, Timestamp),
    Partial(A),
}

/// When a key's sessions need attention next: the earliest firing, or the earliest end of
/// allowed lateness of a fired session.
fn next_timer<A>(sessions: &[Session<A>], lateness: i64) -> Option<i64> {
    sessions
        .iter()
        .map(|s| match s.fired {
            false => s.window.max_timestamp(),
            true => s.window.max_timestamp().saturating_add(lateness),
        })
        .min()
}

impl<W, K, T, C> SessionWindowOp<W, K, T, C>
where
    W: WindowFunction<K, T>,
    K: Key,
    C: Collector<W::Out>,
{
    /// Merges `window` and every overlapping session of `ks` into one session, with
    /// `incoming` added; returns its index.
    fn merge_into(
        function: &mut W,
        ks: &mut KeySessions<W::Acc>,
        window: TimeWindow,
        incoming: Incoming<T, W::Acc>,
    ) -> usize {
        let mut hits = ks
            .sessions
            .iter()
            .enumerate()
            .filter(|(_, s)| s.window.overlaps(&window))
            .map(|(i, _)| i);
        let t = match (hits.next(), hits.next()) {
            (None, _) => {
                let acc = match incoming {
                    Incoming::Record(value, ts) => {
                        let mut acc = function.create();
                        function.add(&mut acc, value, ts);
                        acc
                    }
                    Incoming::Partial(acc) => acc,
                };
                ks.sessions.push(Session {
                    window,
                    acc,
                    fired: false,
                });
                return ks.sessions.len() - 1;
            }
            (Some(first), None) => {
                let s = &mut ks.sessions[first];
                s.window = s.window.span(&window);
                first
            }
            (Some(first), Some(second)) => {
                // The record bridges sessions: fold the others into the first. Removing in
                // descending order never moves the first.
                let mut others: Vec<usize> = std::iter::once(second).chain(hits).collect();
                others.sort_unstable_by(|a, b| b.cmp(a));
                let s_window = ks.sessions[first].window.span(&window);
                ks.sessions[first].window = s_window;
                for i in others {
                    let other = ks.sessions.swap_remove(i);
                    let s = &mut ks.sessions[first];
                    s.window = s.window.span(&other.window);
                    s.fired &= other.fired;
                    function.merge(&mut s.acc, other.acc);
                }
                first
            }
        };
        let acc = &mut ks.sessions[t].acc;
        match incoming {
            Incoming::Record(value, ts) => function.add(acc, value, ts),
            Incoming::Partial(other) => function.merge(acc, other),
        }
        t
    }

    /// The key's timer at `at` came due at watermark `w`: fire and drop what is due, re-arm.
    /// A timer the key no longer waits for (an earlier one replaced it) does nothing.
    fn on_key_timer(&mut self, key: K, at: i64, w: i64) -> Result<()> {
        let SessionWindowOp {
            function,
            lateness,
            keys,
            timers,
            out,
            next,
            ..
        } = self;
        let mut table = keys.get()?.lock();
        let Some(ks) = table.get_mut(&(), &key)? else {
            return Ok(());
        };
        if ks.timer != Some(at) {
            return Ok(());
        }
        ks.timer = None;
        ks.sessions.sort_by_key(|s| s.window.start);
        for s in &mut ks.sessions {
            if !s.fired && s.window.max_timestamp() <= w {
                s.fired = true;
                function.emit(&key, &s.window, &[&s.acc], out)?;
                for o in out.drain(..) {
                    next.collect(o, s.window.max_timestamp())?;
                }
            }
        }
        let lateness = *lateness;
        ks.sessions
            .retain(|s| !(s.fired && s.window.max_timestamp().saturating_add(lateness) <= w));
        match next_timer(&ks.sessions, lateness) {
            Some(at) => {
                ks.timer = Some(at);
                timers.register_at(at, key, ())?;
            }
            None => table.remove(&(), &key)?,
        }
        Ok(())
    }
}

impl<W, K, T, C> Collector<(K, Combined<T, W::Acc>)> for SessionWindowOp<W, K, T, C>
where
    W: WindowFunction<K, T>,
    K: Key,
    C: Collector<W::Out>,
{
    #[inline]
    fn collect(&mut self, (key, value): (K, Combined<T, W::Acc>), ts: Timestamp) -> Result<()> {
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
        if !is_event_time(ts) {
            return Err(no_timestamp_error(ts));
        }
        let (window, incoming) = match value {
            Combined::Raw(value) => {
                let horizon = self.watermark.max(self.ctx.input_watermark()).0;
                if ts.saturating_add(self.lateness) <= horizon {
                    if !self.late.emit((key, value), ts)? {
                        self.ctx.count_late_dropped(1);
                    }
                    return Ok(());
                }
                let window = TimeWindow::new(ts, ts.saturating_add(self.gap));
                (window, Incoming::Record(value, ts))
            }
            // A combiner's local session: its records were on time where they were combined,
            // and it comes before the watermark reaches its start, so it normally merges with
            // nothing that has fired; if the watermark here ran ahead of that input's (after
            // idleness), the merged session fires again, as a late record's would.
            Combined::Session(window, acc) => (window, Incoming::Partial(acc)),
            Combined::Partial(_) => {
                return Err(crate::Error::Config(
                    "internal: a slice's partial accumulator reached a session window".into(),
                ));
            }
        };
        let SessionWindowOp {
            function,
            lateness,
            keys,
            timers,
            out,
            next,
            watermark,
            ..
        } = self;
        let mut table = keys.get()?.lock();
        let ks = match table.get_mut(&(), &key)? {
            Some(ks) => ks,
            None => table.get_or_insert_with(&(), key.clone(), || KeySessions {
                sessions: Vec::new(),
                timer: None,
            })?,
        };
        let t = Self::merge_into(function, ks, window, incoming);
        let session = &mut ks.sessions[t];
        if session.window.max_timestamp() > watermark.0 {
            // Extended past the watermark: it fires (again) when the watermark gets there.
            session.fired = false;
        } else {
            // Within the allowed lateness of a session the watermark has passed: it fires now
            // (again, if it fired before).
            session.fired = true;
            let window = session.window;
            function.emit(&key, &window, &[&session.acc], out)?;
            for o in out.drain(..) {
                next.collect(o, window.max_timestamp())?;
            }
        }
        let at = next_timer(&ks.sessions, *lateness);
        let rearm = match (ks.timer, at) {
            (Some(pending), Some(at)) if at >= pending => None,
            (_, at) => at,
        };
        if let Some(at) = rearm {
            ks.timer = Some(at);
            timers.register_at(at, key, ())?;
        }
        Ok(())
    }
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
        if watermark > self.watermark {
            self.watermark = watermark;
            let w = watermark.0;
            while let Some((at, key, ())) = self.timers.pop_due(w)? {
                self.on_key_timer(key, at, w)?;
            }
        }
        self.next.on_watermark(watermark)
    }
    fn on_barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
        self.progress.save(&self.watermark.0)?;
        self.next.on_barrier(barrier)
    }
    crate::forward_hooks!(on_status, on_processing_time, flush, on_end);
}
