//! The in-process backend: ranks are threads of one process and communicate through shared
//! memory, directly between their buffers.
//!
//! A collective runs on each rank's stream worker. Every rank publishes raw pointers to its
//! (locked) buffers at a rendezvous keyed by the call's sequence number; once all have arrived
//! and their signatures agree, each rank does its share of the work straight between the
//! published buffers (all-reduce: rank `r` reduces block `r` of every input, in rank order, and
//! writes it into block `r` of every buffer: each element read once per input and written once
//! per output, with no staging copy; all-gather and broadcast: rank `r` copies block `r` of the
//! gathered result into every output, reading each input element once), then all meet at a
//! closing barrier before any buffer is released. No lock is held while data moves; the
//! rendezvous lock only guards the bookkeeping. The loops are `hostmem`'s (see `reduce`).

use super::reduce::{self, Raw};
use super::{
    check_counts, check_rank, host, CollOp, CommConfig, Communicator, ReduceOp, Signature, Work,
};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::stream::Stream;
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a waiter re-checks for failed peers and deadlines.
const POLL: Duration = Duration::from_millis(20);

/// A blocked point-to-point call: the peer it waits for, what it is, since when.
type P2pWait = (usize, P2pCall, Instant);

/// A point-to-point call as named in errors (`send #3 to rank 1 (tag 0) on threads:world`),
/// formatted only when an error needs it: the hot path does not allocate for it.
#[derive(Clone, Debug)]
struct P2pCall {
    /// `send` or `recv`.
    op: &'static str,
    /// The call's number among this (src, dst, tag)'s calls.
    n: u64,
    /// The other rank.
    peer: usize,
    tag: u32,
    comm: Arc<str>,
}

impl std::fmt::Display for P2pCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = if self.op == "send" { "to" } else { "from" };
        write!(
            f,
            "{} #{} {dir} rank {} (tag {}) on {}",
            self.op, self.n, self.peer, self.tag, self.comm
        )
    }
}

/// State shared by every rank of one `launch`.
pub(crate) struct World {
    size: usize,
    failed: Mutex<Option<(usize, String)>>,
    /// Point-to-point waits in progress: (rank, stream) -> (peer, what, since).
    waits: Mutex<HashMap<(usize, u64), P2pWait>>,
    /// Deadlocks found, by rank: every rank of a cycle reports it (each takes its entry once).
    deadlocked: Mutex<HashMap<usize, String>>,
}

impl World {
    pub(crate) fn new(size: usize) -> Arc<World> {
        Arc::new(World {
            size,
            failed: Mutex::new(None),
            waits: Mutex::new(HashMap::new()),
            deadlocked: Mutex::new(HashMap::new()),
        })
    }

    /// Marks `rank` failed (the first failure wins); everyone waiting gives up within [`POLL`].
    pub(crate) fn fail(&self, rank: usize, reason: String) {
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some((rank, reason));
        }
    }

    pub(crate) fn first_failure(&self) -> Option<(usize, String)> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A deadlock involving `from`: one another rank of the cycle already found, or a cycle of
    /// point-to-point waits through `from`, each older than `grace` (then recorded for every
    /// rank on it, so that all of them report it, not only the first to notice).
    fn deadlock_cycle(&self, from: usize, grace: Duration) -> Option<String> {
        let mut found = self.deadlocked.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = found.remove(&from) {
            return Some(c);
        }
        let waits = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let edges: Vec<(usize, usize, &P2pCall)> = waits
            .iter()
            .filter(|(_, (_, _, since))| now.duration_since(*since) >= grace)
            .map(|((r, _), (p, what, _))| (*r, *p, what))
            .collect();
        // Depth-first search from `from` back to itself over old-enough edges.
        let mut path: Vec<(usize, usize, &P2pCall)> = Vec::new();
        fn dfs<'a>(
            node: usize,
            target: usize,
            edges: &[(usize, usize, &'a P2pCall)],
            path: &mut Vec<(usize, usize, &'a P2pCall)>,
            seen: &mut Vec<usize>,
        ) -> bool {
            for &(r, p, w) in edges.iter().filter(|e| e.0 == node) {
                path.push((r, p, w));
                if p == target {
                    return true;
                }
                if !seen.contains(&p) {
                    seen.push(p);
                    if dfs(p, target, edges, path, seen) {
                        return true;
                    }
                }
                path.pop();
            }
            false
        }
        let mut seen = vec![from];
        if dfs(from, from, &edges, &mut path, &mut seen) {
            let cycle = path
                .iter()
                .map(|(r, p, w)| format!("rank {r} ({w}) waits for rank {p}"))
                .collect::<Vec<_>>()
                .join(", ");
            for (r, _, _) in &path {
                if *r != from {
                    found.insert(*r, cycle.clone());
                }
            }
            Some(cycle)
        } else {
            None
        }
    }
}

#[derive(Clone)]
struct Arrival {
    sig: Signature,
    input: Option<Raw>,
    output: Option<Raw>,
    /// split: (color + 1, or 0 for none; key)
    split: (u64, usize),
}

/// Where a split put this rank: its new group and its rank there.
type Placement = Option<(Arc<Group>, usize)>;

thread_local! {
    /// The arrivals of the collective this (stream worker) thread is running, reused per call.
    static ARRIVALS: std::cell::Cell<Vec<Arrival>> = const { std::cell::Cell::new(Vec::new()) };
    /// (buffer, element offset) lists handed to the reductions, reused per call.
    static SLICES: std::cell::Cell<Vec<(Raw, usize)>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's reusable (buffer, offset) list, emptied.
fn with_slices<T>(f: impl FnOnce(&mut Vec<(Raw, usize)>) -> T) -> T {
    let mut v = SLICES.with(|s| s.take());
    v.clear();
    let out = f(&mut v);
    SLICES.with(|s| s.replace(v));
    out
}

struct Round {
    arrivals: Vec<Option<Arrival>>,
    /// Ranks that arrived at some point (an arrival retracted on timeout stays seen, so the
    /// timeout names the ranks that never came, not those that gave up first).
    seen: Vec<bool>,
    arrived: usize,
    finished: usize,
    left: usize,
    /// split: the new groups, by member rank.
    groups: Option<Vec<Placement>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum P2pState {
    Posted,
    Claimed,
    Done,
}

struct P2pSlot {
    sig: Signature,
    data: Raw,
    state: P2pState,
    error: Option<Error>,
}

/// Rounds kept for reuse: collectives in flight at once on one communicator (usually one or two).
const ROUND_POOL: usize = 8;

impl Round {
    fn new(size: usize) -> Round {
        Round {
            arrivals: vec![None; size],
            seen: vec![false; size],
            arrived: 0,
            finished: 0,
            left: 0,
            groups: None,
        }
    }

    /// Back to a fresh round, keeping the allocations.
    fn reset(&mut self) {
        self.arrivals.fill(None);
        self.seen.fill(false);
        self.arrived = 0;
        self.finished = 0;
        self.left = 0;
        self.groups = None;
    }
}

#[derive(Default)]
struct GroupState {
    rounds: HashMap<u64, Round>,
    /// Finished rounds whose vectors the next rounds reuse: no allocation per call once warm.
    spare: Vec<Round>,
    /// (src, dst, tag, n): the n-th send from src to dst with tag.
    p2p: HashMap<(usize, usize, u32, u64), P2pSlot>,
}

/// One communicator's shared state.
pub(crate) struct Group {
    name: Arc<str>,
    /// World ranks of the members, indexed by group rank.
    members: Vec<usize>,
    world: Arc<World>,
    config: CommConfig,
    state: Mutex<GroupState>,
    cv: Condvar,
}

impl Group {
    pub(crate) fn new_world(world: Arc<World>, config: CommConfig) -> Arc<Group> {
        Arc::new(Group {
            name: "threads:world".into(),
            members: (0..world.size).collect(),
            world,
            config,
            state: Mutex::new(GroupState::default()),
            cv: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes round `seq`, keeping its vectors for a later round.
    fn retire(st: &mut GroupState, seq: u64) {
        if let Some(mut r) = st.rounds.remove(&seq) {
            if st.spare.len() < ROUND_POOL {
                r.reset();
                st.spare.push(r);
            }
        }
    }

    /// Waits (releasing the lock) until `done` holds; fails on a failed peer or the deadline.
    fn wait<'a>(
        &'a self,
        mut st: MutexGuard<'a, GroupState>,
        deadline: Instant,
        what: &dyn Fn(&GroupState) -> String,
        done: &dyn Fn(&GroupState) -> bool,
        on_poll: &dyn Fn() -> Option<Error>,
    ) -> Result<MutexGuard<'a, GroupState>> {
        loop {
            if done(&st) {
                return Ok(st);
            }
            if let Some((rank, reason)) = self.world.first_failure() {
                return Err(Error::PeerFailed {
                    rank,
                    reason,
                    waiting_in: what(&st),
                });
            }
            if let Some(e) = on_poll() {
                return Err(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    what: what(&st),
                    seconds: self.config.timeout.as_secs_f64(),
                });
            }
            st = self
                .cv
                .wait_timeout(st, POLL.min(deadline - now))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The collective protocol for group rank `me` at call `seq`: arrive, wait for everyone,
    /// compare signatures, run `body` over all arrivals, and meet at the closing barrier.
    fn collective(
        &self,
        me: usize,
        seq: u64,
        arrival: Arrival,
        body: impl FnOnce(&[Arrival]),
    ) -> Result<Placement> {
        let size = self.members.len();
        let opname = arrival.sig.op.name();
        let mut st = self.lock();
        {
            let st = &mut *st;
            let round = st
                .rounds
                .entry(seq)
                .or_insert_with(|| st.spare.pop().unwrap_or_else(|| Round::new(size)));
            round.arrivals[me] = Some(arrival);
            round.seen[me] = true;
            round.arrived += 1;
            // Only the last arrival changes what the others wait for: waking them earlier would
            // cost every waiter a context switch per arrival.
            if round.arrived == size {
                self.cv.notify_all();
            }
        }
        let what = |st: &GroupState| {
            let missing: Vec<usize> = st
                .rounds
                .get(&seq)
                .map(|r| (0..size).filter(|&i| !r.seen[i]).collect())
                .unwrap_or_default();
            format!(
                "{opname} #{seq} on {}: ranks {missing:?} never arrived",
                self.name
            )
        };
        let deadline = Instant::now() + self.config.timeout;
        let all_here = |st: &GroupState| st.rounds.get(&seq).is_some_and(|r| r.arrived == size);
        st = match self.wait(st, deadline, &what, &all_here, &|| None) {
            Ok(st) => st,
            Err(e) => {
                // Retract the arrival so no one can start with a buffer this rank is releasing.
                let mut st = self.lock();
                if let Some(r) = st.rounds.get_mut(&seq) {
                    if r.arrived < size {
                        r.arrivals[me] = None;
                        r.arrived -= 1;
                        if r.arrived == 0 {
                            Self::retire(&mut st, seq);
                        }
                        return Err(e);
                    }
                }
                // Everyone arrived just now: carry on with the collective after all.
                st
            }
        };
        // This worker thread's copy of the arrivals (cloning a signature shares its counts): the
        // vector is reused call after call, so the rendezvous does not allocate once warm.
        let mut arrivals = ARRIVALS.with(|a| a.take());
        arrivals.clear();
        arrivals.extend(st.rounds[&seq].arrivals.iter().flatten().cloned());
        drop(st);
        let mismatch = self.mismatch(seq, &arrivals);
        let panicked = if mismatch.is_none() {
            catch_unwind(AssertUnwindSafe(|| body(&arrivals))).err()
        } else {
            None
        };
        ARRIVALS.with(|a| a.replace(arrivals));
        // Closing barrier: nobody releases a buffer while a peer may still touch it. Bodies never
        // block, so every rank that arrived gets here; no deadline is needed.
        let mut st = self.lock();
        let round = st.rounds.get_mut(&seq).expect("round");
        round.finished += 1;
        if round.finished == size {
            self.cv.notify_all();
        }
        while st.rounds[&seq].finished < size {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let r = st.rounds.get_mut(&seq).expect("round");
        let placed = r.groups.as_ref().and_then(|g| g[me].clone());
        r.left += 1;
        if r.left == size {
            Self::retire(&mut st, seq);
        }
        drop(st);
        if let Some(p) = panicked {
            std::panic::resume_unwind(p);
        }
        match mismatch {
            Some(e) => Err(e),
            None => Ok(placed),
        }
    }

    /// The error every rank reports when the signatures at `seq` differ.
    fn mismatch(&self, seq: u64, arrivals: &[Arrival]) -> Option<Error> {
        let first = &arrivals[0].sig;
        let other = arrivals.iter().position(|a| &a.sig != first)?;
        let b = &arrivals[other].sig;
        let ranks_with = |s: &Signature| -> Vec<usize> {
            (0..arrivals.len())
                .filter(|&i| &arrivals[i].sig == s)
                .collect()
        };
        Some(Error::CollectiveMismatch {
            comm: self.name.to_string(),
            seq,
            call_a: first.to_string(),
            ranks_a: ranks_with(first).into(),
            call_b: b.to_string(),
            ranks_b: ranks_with(b).into(),
        })
    }
}

/// A rank's handle on an in-process communicator.
pub struct ThreadComm {
    rank: usize,
    group: Arc<Group>,
    seq: AtomicU64,
    p2p_seq: Mutex<HashMap<(usize, usize, u32), u64>>,
    /// Recently used count lists, shared by the signatures that repeat them (the usual case: the
    /// same shapes every step), so that building a signature does not allocate.
    counts: Mutex<Vec<Arc<[usize]>>>,
}

/// How many distinct count lists a [`ThreadComm`] keeps.
const COUNTS_KEPT: usize = 16;

impl ThreadComm {
    pub(crate) fn new(rank: usize, group: Arc<Group>) -> ThreadComm {
        ThreadComm {
            rank,
            group,
            seq: AtomicU64::new(0),
            p2p_seq: Mutex::new(HashMap::new()),
            counts: Mutex::new(Vec::new()),
        }
    }

    /// A shared count list equal to `len` values `value_at(i)`: a recently used one, or a new one
    /// (kept for next time).
    fn counts_of(&self, len: usize, value_at: impl Fn(usize) -> usize) -> Arc<[usize]> {
        let mut kept = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let same = |c: &Arc<[usize]>| c.len() == len && (0..len).all(|i| c[i] == value_at(i));
        if let Some(c) = kept.iter().find(|c| same(c)) {
            return c.clone();
        }
        let c: Arc<[usize]> = (0..len).map(&value_at).collect();
        if kept.len() == COUNTS_KEPT {
            kept.remove(0);
        }
        kept.push(c.clone());
        c
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Block `r` of `0..n` split into `size` contiguous blocks aligned to 16 elements (64 bytes
    /// of f32, so ranks do not write the same cache line).
    fn block(n: usize, size: usize, r: usize) -> (usize, usize) {
        let edge = |i: usize| (n * i / size).div_ceil(16) * 16;
        let lo = edge(r).min(n);
        let hi = if r + 1 == size { n } else { edge(r + 1).min(n) };
        (lo, hi)
    }

    fn sig(op: CollOp, dtype: Option<DType>, counts: Arc<[usize]>) -> Signature {
        Signature {
            op,
            dtype,
            counts,
            root: None,
            redop: None,
        }
    }

    fn p2p_key(&self, src: usize, dst: usize, tag: u32) -> u64 {
        let mut m = self.p2p_seq.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry((src, dst, tag)).or_insert(0);
        let k = *n;
        *n += 1;
        k
    }
}

struct Shared {
    group: Arc<Group>,
    rank: usize,
}

impl ThreadComm {
    fn shared(&self) -> Shared {
        Shared {
            group: self.group.clone(),
            rank: self.rank,
        }
    }

    fn reduce_scatter_impl(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: Arc<[usize]>,
        op: ReduceOp,
    ) -> Result<Work> {
        const OP: &str = "reduce_scatter";
        let dtype = host::comm_dtype(OP, "input", input)?;
        host::same_dtype(OP, "output", output, dtype)?;
        host::count(OP, "input", input, counts.iter().sum())?;
        host::count(OP, "output", output, counts[self.rank])?;
        let seq = self.next_seq();
        let mut sig = Self::sig(CollOp::ReduceScatter, Some(dtype), counts.clone());
        sig.redop = Some(op);
        let sh = self.shared();
        host::enqueue(
            stream,
            OP,
            &[("input", input)],
            &[("output", &*output)],
            move |r, w| {
                let arrival = Arrival {
                    sig,
                    input: Some(r[0]),
                    output: Some(w[0]),
                    split: (0, 0),
                };
                let me = sh.rank;
                let off: usize = counts[..me].iter().sum();
                sh.group.collective(me, seq, arrival, |all| {
                    with_slices(|srcs| {
                        srcs.extend(all.iter().map(|a| (a.input.expect("input"), off)));
                        // SAFETY: all ranks arrived and hold their buffers locked until the
                        // closing barrier; this rank reads block `me` of every input (read-only
                        // for everyone) and writes only its own output.
                        unsafe { reduce::reduce_to(op, srcs, &[(w[0], 0)], counts[me]) };
                    });
                })?;
                Ok(())
            },
        )
    }

    fn all_gather_impl(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: Arc<[usize]>,
    ) -> Result<Work> {
        const OP: &str = "all_gather";
        let dtype = host::comm_dtype(OP, "input", input)?;
        host::same_dtype(OP, "output", output, dtype)?;
        host::count(OP, "input", input, counts[self.rank])?;
        host::count(OP, "output", output, counts.iter().sum())?;
        let seq = self.next_seq();
        let sig = Self::sig(CollOp::AllGather, Some(dtype), counts.clone());
        let sh = self.shared();
        host::enqueue(
            stream,
            OP,
            &[("input", input)],
            &[("output", &*output)],
            move |r, w| {
                let arrival = Arrival {
                    sig,
                    input: Some(r[0]),
                    output: Some(w[0]),
                    split: (0, 0),
                };
                let me = sh.rank;
                sh.group.collective(me, seq, arrival, |all| {
                    // Rank `me` fills positions [lo, hi) of every output, reading each input
                    // element there once (the inputs cover the output's positions in rank order).
                    let total: usize = counts.iter().sum();
                    let (lo, hi) = Self::block(total, all.len(), me);
                    let total_bytes = total * dtype.size_in_bytes() * all.len();
                    with_slices(|outs| {
                        outs.extend(all.iter().map(|a| (a.output.expect("output"), 0)));
                        let mut start = 0;
                        for (q, a) in all.iter().enumerate() {
                            let (a_lo, a_hi) = (start.max(lo), (start + counts[q]).min(hi));
                            if a_lo < a_hi {
                                for o in outs.iter_mut() {
                                    o.1 = a_lo;
                                }
                                let src = (a.input.expect("input"), a_lo - start);
                                // SAFETY: inputs are read-only for everyone during the
                                // collective; positions [lo, hi) of every output are written by
                                // this rank alone (blocks are disjoint per rank).
                                unsafe { reduce::copy_to(src, outs, a_hi - a_lo, total_bytes) };
                            }
                            start += counts[q];
                        }
                    });
                })?;
                Ok(())
            },
        )
    }
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.group.members.len()
    }

    fn name(&self) -> &str {
        &self.group.name
    }

    fn all_reduce(&self, stream: &Stream, buf: &mut Tensor, op: ReduceOp) -> Result<Work> {
        const OP: &str = "all_reduce";
        let dtype = host::comm_dtype(OP, "buf", buf)?;
        let n = buf.numel();
        let seq = self.next_seq();
        let mut sig = Self::sig(CollOp::AllReduce, Some(dtype), self.counts_of(1, |_| n));
        sig.redop = Some(op);
        let sh = self.shared();
        host::enqueue(stream, OP, &[], &[("buf", &*buf)], move |_, w| {
            let arrival = Arrival {
                sig,
                input: None,
                output: Some(w[0]),
                split: (0, 0),
            };
            let me = sh.rank;
            sh.group.collective(me, seq, arrival, |all| {
                let (lo, hi) = Self::block(n, all.len(), me);
                with_slices(|bufs| {
                    bufs.extend(all.iter().map(|a| (a.output.expect("buf"), lo)));
                    // SAFETY: block [lo, hi) of every rank's buffer is read and written by this
                    // rank alone (blocks are disjoint per rank) until the closing barrier; each
                    // element is fully read from all sources (one chunk at a time) before it is
                    // written.
                    unsafe { reduce::reduce_to(op, bufs, bufs, hi - lo) };
                });
            })?;
            Ok(())
        })
    }

    fn all_gather(&self, stream: &Stream, input: &Tensor, output: &mut Tensor) -> Result<Work> {
        let n = input.numel();
        let counts = self.counts_of(self.size(), |_| n);
        self.all_gather_impl(stream, input, output, counts)
    }

    fn reduce_scatter(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        op: ReduceOp,
    ) -> Result<Work> {
        let n = output.numel();
        let counts = self.counts_of(self.size(), |_| n);
        self.reduce_scatter_impl(stream, input, output, counts, op)
    }

    fn all_gather_v(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: &[usize],
    ) -> Result<Work> {
        check_counts("all_gather_v", counts, self.size())?;
        let counts = self.counts_of(counts.len(), |i| counts[i]);
        self.all_gather_impl(stream, input, output, counts)
    }

    fn reduce_scatter_v(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: &[usize],
        op: ReduceOp,
    ) -> Result<Work> {
        check_counts("reduce_scatter_v", counts, self.size())?;
        let counts = self.counts_of(counts.len(), |i| counts[i]);
        self.reduce_scatter_impl(stream, input, output, counts, op)
    }

    fn broadcast(&self, stream: &Stream, buf: &mut Tensor, root: usize) -> Result<Work> {
        const OP: &str = "broadcast";
        check_rank(OP, root, self.size())?;
        let dtype = host::comm_dtype(OP, "buf", buf)?;
        let n = buf.numel();
        let seq = self.next_seq();
        let mut sig = Self::sig(CollOp::Broadcast, Some(dtype), self.counts_of(1, |_| n));
        sig.root = Some(root);
        let sh = self.shared();
        host::enqueue(stream, OP, &[], &[("buf", &*buf)], move |_, w| {
            let arrival = Arrival {
                sig,
                input: None,
                output: Some(w[0]),
                split: (0, 0),
            };
            let me = sh.rank;
            sh.group.collective(me, seq, arrival, |all| {
                // Rank `me` copies block `me` of the root's buffer into every other buffer: the
                // root's data is read from memory once, not once per rank.
                let (lo, hi) = Self::block(n, all.len(), me);
                with_slices(|dsts| {
                    dsts.extend(all.iter().map(|a| (a.output.expect("buf"), lo)));
                    let src = (all[root].output.expect("buf"), lo);
                    let total_bytes = n * dtype.size_in_bytes() * (all.len() - 1);
                    // SAFETY: block [lo, hi) of every buffer is accessed by this rank alone
                    // (blocks are disjoint per rank); the root's block is only read (copy_to
                    // skips it as a destination).
                    unsafe { reduce::copy_to(src, dsts, hi - lo, total_bytes) };
                });
            })?;
            Ok(())
        })
    }

    fn send(&self, stream: &Stream, buf: &Tensor, peer: usize, tag: u32) -> Result<Work> {
        const OP: &str = "send";
        check_rank(OP, peer, self.size())?;
        if peer == self.rank {
            return Err(Error::invalid(OP, "peer", "a rank cannot send to itself"));
        }
        let dtype = host::comm_dtype(OP, "buf", buf)?;
        let n = buf.numel();
        let key = (self.rank, peer, tag, self.p2p_key(self.rank, peer, tag));
        let counts = self.counts_of(1, |_| n);
        let sh = self.shared();
        let sid = stream.id();
        host::enqueue(stream, OP, &[("buf", buf)], &[], move |r, _| {
            let g = &sh.group;
            let mut st = g.lock();
            st.p2p.insert(
                key,
                P2pSlot {
                    sig: Self::sig(CollOp::Send, Some(dtype), counts),
                    data: r[0],
                    state: P2pState::Posted,
                    error: None,
                },
            );
            g.cv.notify_all();
            let call = P2pCall {
                op: "send",
                n: key.3,
                peer,
                tag,
                comm: g.name.clone(),
            };
            let out = p2p_wait(g, st, sh.rank, sid, peer, &call, &|st| {
                st.p2p
                    .get(&key)
                    .is_none_or(|s| s.state == P2pState::Done || s.error.is_some())
            });
            let mut st = match out {
                Ok(st) => st,
                Err(e) => {
                    // Retract the send unless a receiver is copying from it right now.
                    let mut st = g.lock();
                    if st
                        .p2p
                        .get(&key)
                        .is_some_and(|s| s.state == P2pState::Claimed)
                    {
                        while st
                            .p2p
                            .get(&key)
                            .is_some_and(|s| s.state == P2pState::Claimed)
                        {
                            st = g.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                        }
                        st.p2p.remove(&key);
                        return Ok(());
                    }
                    st.p2p.remove(&key);
                    return Err(e);
                }
            };
            let slot = st.p2p.remove(&key);
            match slot.and_then(|s| s.error) {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
    }

    fn recv(&self, stream: &Stream, buf: &mut Tensor, peer: usize, tag: u32) -> Result<Work> {
        const OP: &str = "recv";
        check_rank(OP, peer, self.size())?;
        if peer == self.rank {
            return Err(Error::invalid(
                OP,
                "peer",
                "a rank cannot receive from itself",
            ));
        }
        let dtype = host::comm_dtype(OP, "buf", buf)?;
        let n = buf.numel();
        let key = (peer, self.rank, tag, self.p2p_key(peer, self.rank, tag));
        let counts = self.counts_of(1, |_| n);
        let sh = self.shared();
        let sid = stream.id();
        host::enqueue(stream, OP, &[], &[("buf", &*buf)], move |_, w| {
            let g = &sh.group;
            let st = g.lock();
            let call = P2pCall {
                op: "recv",
                n: key.3,
                peer,
                tag,
                comm: g.name.clone(),
            };
            let mut st = p2p_wait(g, st, sh.rank, sid, peer, &call, &|st| {
                st.p2p.contains_key(&key)
            })?;
            let slot = st.p2p.get_mut(&key).expect("posted");
            let want = Self::sig(CollOp::Send, Some(dtype), counts);
            if slot.sig != want {
                let e = Error::CollectiveMismatch {
                    comm: g.name.to_string(),
                    seq: key.3,
                    call_a: format!("send to rank {} (tag {tag}): {}", key.1, slot.sig),
                    ranks_a: Box::new([peer]),
                    call_b: format!("recv from rank {peer} (tag {tag}): {want}"),
                    ranks_b: Box::new([key.1]),
                };
                slot.error = Some(e.clone());
                g.cv.notify_all();
                return Err(e);
            }
            slot.state = P2pState::Claimed;
            let src = slot.data;
            drop(st);
            // SAFETY: the sender keeps its buffer locked and published until the slot is Done
            // (it waits for this rank, even on its own error, while the slot is Claimed).
            unsafe { reduce::copy(src, 0, w[0], 0, n) };
            let mut st = g.lock();
            st.p2p.get_mut(&key).expect("claimed").state = P2pState::Done;
            g.cv.notify_all();
            Ok(())
        })
    }

    fn barrier(&self, stream: &Stream) -> Result<Work> {
        let seq = self.next_seq();
        let sig = Self::sig(CollOp::Barrier, None, self.counts_of(0, |_| 0));
        let sh = self.shared();
        host::enqueue(stream, "barrier", &[], &[], move |_, _| {
            let arrival = Arrival {
                sig,
                input: None,
                output: None,
                split: (0, 0),
            };
            sh.group.collective(sh.rank, seq, arrival, |_| {})?;
            Ok(())
        })
    }

    fn split(&self, color: Option<u32>, key: usize) -> Result<Option<Box<dyn Communicator>>> {
        let seq = self.next_seq();
        let g = &self.group;
        let arrival = Arrival {
            sig: Self::sig(CollOp::Split, None, [].into()),
            input: None,
            output: None,
            split: (color.map_or(0, |c| c as u64 + 1), key),
        };
        let me = self.rank;
        let placed = g.collective(me, seq, arrival, |all| {
            // The lowest rank builds every new group and leaves them in the round for the rest.
            if me != 0 {
                return;
            }
            let mut by_color: HashMap<u64, Vec<(usize, usize)>> = HashMap::new();
            for (r, a) in all.iter().enumerate() {
                if a.split.0 != 0 {
                    by_color.entry(a.split.0).or_default().push((a.split.1, r));
                }
            }
            let mut placed: Vec<Placement> = vec![None; all.len()];
            for (c, mut ranks) in by_color {
                ranks.sort();
                let grp = Arc::new(Group {
                    name: format!("{}/split({})", g.name, c - 1).into(),
                    members: ranks.iter().map(|&(_, r)| g.members[r]).collect(),
                    world: g.world.clone(),
                    config: g.config.clone(),
                    state: Mutex::new(GroupState::default()),
                    cv: Condvar::new(),
                });
                for (i, &(_, r)) in ranks.iter().enumerate() {
                    placed[r] = Some((grp.clone(), i));
                }
            }
            g.lock().rounds.get_mut(&seq).expect("round").groups = Some(placed);
        });
        Ok(placed?.map(|(grp, r)| Box::new(ThreadComm::new(r, grp)) as Box<dyn Communicator>))
    }
}

/// Waits for a point-to-point condition, registering the wait for deadlock detection.
fn p2p_wait<'a>(
    g: &'a Group,
    st: MutexGuard<'a, GroupState>,
    me: usize,
    stream: u64,
    peer: usize,
    what: &P2pCall,
    done: &dyn Fn(&GroupState) -> bool,
) -> Result<MutexGuard<'a, GroupState>> {
    if done(&st) {
        return Ok(st); // nothing to wait for: no wait to register
    }
    let (wme, wpeer) = (g.members[me], g.members[peer]);
    let since = Instant::now();
    g.world
        .waits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((wme, stream), (wpeer, what.clone(), since));
    let deadline = since + g.config.timeout;
    let grace = g.config.deadlock_grace;
    let out = g.wait(st, deadline, &|_| what.to_string(), done, &|| {
        // A cycle only counts waits older than the grace period (this one included, and a cycle
        // another rank found through this rank was found after this wait's grace), so a young
        // wait skips the search and its allocations.
        if since.elapsed() < grace {
            return None;
        }
        g.world
            .deadlock_cycle(wme, grace)
            .map(|cycle| Error::Deadlock { cycle })
    });
    g.world
        .waits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&(wme, stream));
    out
}
