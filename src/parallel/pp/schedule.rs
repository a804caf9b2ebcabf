//! Pipeline schedules as data: pure functions from a [`ScheduleConfig`] to, per rank, the ordered
//! list of [`Action`]s it performs.
//!
//! The list of a rank is also its *enqueue order*: the executor walks it front to back, putting
//! compute actions on the compute stream and each transfer on its own p2p stream (one per
//! direction: activation send, activation receive, gradient send, gradient receive), so a transfer
//! waits only for earlier transfers of its own kind and, for a send, for the compute action that
//! produced its data. The simulator ([`super::simulate`](mod@super::simulate)) models exactly that.

use std::fmt;
use std::str::FromStr;

use super::action::{Action, Placement};
use crate::error::{Error, Result};

/// The schedules users know, by the names they know them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScheduleKind {
    /// No pipelining: each micro-batch goes through every stage forward and back before the
    /// next one starts (plain model parallelism with gradient accumulation).
    Naive,
    /// GPipe: all forwards, then all backwards.
    GPipe,
    /// 1F1B (PipeDream-flush): warm-up forwards, then one forward one backward, then cool-down.
    OneFOneB,
    /// Megatron's interleaved 1F1B with `chunks` model chunks per rank.
    Interleaved,
    /// Zero-bubble ZB-H1 (Qi et al. 2023): 1F1B with the backward split into input-gradient and
    /// weight-gradient halves, weight halves deferred into the bubbles, 1F1B's memory.
    ZbH1,
}

impl ScheduleKind {
    /// Every kind.
    pub const ALL: [ScheduleKind; 5] = [
        ScheduleKind::Naive,
        ScheduleKind::GPipe,
        ScheduleKind::OneFOneB,
        ScheduleKind::Interleaved,
        ScheduleKind::ZbH1,
    ];

    /// The name accepted by [`FromStr`] and printed by [`fmt::Display`].
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::Naive => "naive",
            ScheduleKind::GPipe => "gpipe",
            ScheduleKind::OneFOneB => "1f1b",
            ScheduleKind::Interleaved => "interleaved",
            ScheduleKind::ZbH1 => "zb-h1",
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScheduleKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.to_ascii_lowercase();
        Ok(match s.as_str() {
            "naive" => ScheduleKind::Naive,
            "gpipe" => ScheduleKind::GPipe,
            "1f1b" | "pipedream-flush" => ScheduleKind::OneFOneB,
            "interleaved" | "interleaved-1f1b" => ScheduleKind::Interleaved,
            "zb-h1" | "zbh1" => ScheduleKind::ZbH1,
            _ => {
                return Err(Error::invalid(
                    "schedule",
                    "kind",
                    format!("unknown schedule {s:?} (naive, gpipe, 1f1b, interleaved, zb-h1)"),
                ))
            }
        })
    }
}

/// What to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// The schedule.
    pub kind: ScheduleKind,
    /// Pipeline-parallel size (ranks), at least 1.
    pub pp: usize,
    /// Micro-batches per step, at least 1.
    pub microbatches: usize,
    /// Model chunks per rank (`v`): must be 1 except for [`ScheduleKind::Interleaved`].
    pub chunks: usize,
    /// Per global stage (`pp * chunks` entries, or empty for none): recompute that stage's
    /// forward just before its backward, keeping only the stage input in between.
    pub recompute: Vec<bool>,
}

impl ScheduleConfig {
    /// A config without recomputation.
    pub fn new(kind: ScheduleKind, pp: usize, microbatches: usize, chunks: usize) -> Self {
        ScheduleConfig {
            kind,
            pp,
            microbatches,
            chunks,
            recompute: Vec::new(),
        }
    }

    /// The same config with every stage recomputing.
    pub fn recompute_all(mut self) -> Self {
        self.recompute = vec![true; self.pp * self.chunks];
        self
    }
}

/// A built schedule: per rank, the ordered actions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Which schedule this is.
    pub kind: ScheduleKind,
    /// Where the stages live.
    pub placement: Placement,
    /// Micro-batches per step.
    pub microbatches: usize,
    /// Per global stage: whether it recomputes (always `placement.stages()` entries).
    pub recompute: Vec<bool>,
    /// `ranks[r]` is rank `r`'s action list, in order.
    pub ranks: Vec<Vec<Action>>,
}

/// The largest `pp * chunks * microbatches` [`build`] accepts (about a million stage passes):
/// anything bigger is a configuration mistake, not a pipeline.
pub const MAX_STAGE_PASSES: usize = 1 << 20;

impl ScheduleConfig {
    /// Checks the config without building anything; [`build`] calls it first.
    ///
    /// Rules: `pp >= 1`, `microbatches >= 1`, `chunks >= 1`; `chunks == 1` unless the kind is
    /// [`ScheduleKind::Interleaved`]; interleaved needs `pp >= 2` and `microbatches % pp == 0`
    /// (Megatron-LM's original constraint: micro-batches go through the chunks in groups of
    /// `pp`); `recompute` is empty or has exactly `pp * chunks` entries; and
    /// `pp * chunks * microbatches <= MAX_STAGE_PASSES`.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "schedule";
        if self.pp == 0 {
            return Err(Error::invalid(OP, "pp", "must be at least 1, got 0"));
        }
        if self.microbatches == 0 {
            return Err(Error::invalid(
                OP,
                "microbatches",
                "must be at least 1, got 0",
            ));
        }
        if self.chunks == 0 {
            return Err(Error::invalid(OP, "chunks", "must be at least 1, got 0"));
        }
        if self.chunks != 1 && self.kind != ScheduleKind::Interleaved {
            return Err(Error::invalid(
                OP,
                "chunks",
                format!(
                    "the {} schedule has one model chunk per rank, got chunks = {} (only \
                     interleaved takes several)",
                    self.kind, self.chunks
                ),
            ));
        }
        let stages = self.pp.checked_mul(self.chunks);
        let passes = stages.and_then(|s| s.checked_mul(self.microbatches));
        match passes {
            Some(n) if n <= MAX_STAGE_PASSES => {}
            _ => {
                return Err(Error::invalid(
                    OP,
                    "pp * chunks * microbatches",
                    format!(
                        "{} * {} * {} exceeds the limit of {MAX_STAGE_PASSES} stage passes",
                        self.pp, self.chunks, self.microbatches
                    ),
                ))
            }
        }
        let stages = self.pp * self.chunks;
        if self.kind == ScheduleKind::Interleaved {
            if self.pp < 2 {
                return Err(Error::invalid(
                    OP,
                    "pp",
                    format!(
                        "interleaved 1F1B needs at least 2 ranks, got pp = {}",
                        self.pp
                    ),
                ));
            }
            if self.microbatches % self.pp != 0 {
                return Err(Error::invalid(
                    OP,
                    "microbatches",
                    format!(
                        "interleaved 1F1B needs microbatches to be a multiple of pp (Megatron-LM's \
                         constraint), got microbatches = {} and pp = {}",
                        self.microbatches, self.pp
                    ),
                ));
            }
        }
        if !self.recompute.is_empty() && self.recompute.len() != stages {
            return Err(Error::invalid(
                OP,
                "recompute",
                format!(
                    "must be empty or have one entry per stage ({stages} = pp * chunks), got {}",
                    self.recompute.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Builds the schedule `cfg` describes: per rank, its compute actions in order with the transfers
/// and recomputations they need woven in.
///
/// Transfer placement, for a compute action of stage `s` (of `pp * chunks`):
/// a `Forward` on `s > 0` is immediately preceded by its `RecvAct` (from the previous rank) and,
/// on `s < last`, immediately followed by its `SendAct` (to the next rank); a `Backward` or
/// `BackwardInput` on `s < last` is immediately preceded by its `RecvGrad` and, on `s > 0`,
/// immediately followed by its `SendGrad`. On a recomputing stage the `Recompute` of `(mb, chunk)`
/// comes just before the backward (and its `RecvGrad`). With `pp == 1` there are no transfers.
///
/// The compute orders:
/// - [`ScheduleKind::Naive`]: `F0 B0 F1 B1 ...` on every rank: a micro-batch's forward cannot
///   start before the previous one's backward has come all the way back. Bubble `(p-1)/p`.
/// - [`ScheduleKind::GPipe`]: all forwards, then all backwards, both in ascending micro-batch
///   order (as `torch.distributed.pipelining.ScheduleGPipe`). Bubble `(p-1)/(m+p-1)`, `m` live
///   activations per rank.
/// - [`ScheduleKind::OneFOneB`]: rank `i` runs `min(p-1-i, m)` warm-up forwards, then one
///   forward one backward, then the remaining backwards. Same bubble as GPipe, at most `p - i`
///   live activations.
/// - [`ScheduleKind::Interleaved`]: Megatron-LM's `forward_backward_pipelining_with_interleaving`
///   over `m * v` virtual micro-batches: the `k`-th forward is chunk `(k / p) % v` of micro-batch
///   `(k / (p v)) p + k % p`, the `k`-th backward chunk `v - 1 - (k / p) % v` of the same
///   micro-batch; rank `r` warms up with `min(2 (p - r - 1) + (v - 1) p, m v)` forwards.
///   Bubble `(p-1)/(v m + p - 1)`.
/// - [`ScheduleKind::ZbH1`]: the handcrafted ZB-H1 of Qi et al. (2023). Rank `s` runs
///   `p - s` forwards (1F1B's warm-up plus its first steady forward), then `s` times
///   `B F` (input-gradient backward, forward), then `B W F` until the forwards run out, then
///   `B W` until the backwards run out, then the remaining `W`s. At most `p` micro-batches are
///   in flight (forward done, weight gradient not yet) on any rank; with `F = B = W` and free
///   transfers the makespan is `m (F + B + W) + (p - 1)(F + B - W)` for `m >= p`.
pub fn build(cfg: &ScheduleConfig) -> Result<Schedule> {
    cfg.validate()?;
    let placement = Placement {
        pp: cfg.pp,
        chunks: cfg.chunks,
    };
    let stages = placement.stages();
    let recompute = if cfg.recompute.is_empty() {
        vec![false; stages]
    } else {
        cfg.recompute.clone()
    };
    let ranks = (0..cfg.pp)
        .map(|rank| {
            let compute = compute_order(cfg.kind, cfg.pp, cfg.microbatches, cfg.chunks, rank);
            weave(&placement, rank, &compute, &recompute)
        })
        .collect();
    Ok(Schedule {
        kind: cfg.kind,
        placement,
        microbatches: cfg.microbatches,
        recompute,
        ranks,
    })
}

/// The compute actions of `rank`, in order (no transfers, no recomputation). The config is
/// already validated.
fn compute_order(kind: ScheduleKind, p: usize, m: usize, v: usize, rank: usize) -> Vec<Action> {
    let f = |mb: usize| Action::Forward { mb, chunk: 0 };
    let b = |mb: usize| Action::Backward { mb, chunk: 0 };
    let mut out = Vec::new();
    match kind {
        ScheduleKind::Naive => {
            for mb in 0..m {
                out.push(f(mb));
                out.push(b(mb));
            }
        }
        ScheduleKind::GPipe => {
            out.extend((0..m).map(f));
            out.extend((0..m).map(b));
        }
        ScheduleKind::OneFOneB => {
            let warm = (p - 1 - rank).min(m);
            out.extend((0..warm).map(f));
            for i in 0..m - warm {
                out.push(f(warm + i));
                out.push(b(i));
            }
            out.extend((m - warm..m).map(b));
        }
        ScheduleKind::Interleaved => {
            let total = m * v;
            let group = p * v;
            let mb_of = |k: usize| (k / group) * p + k % p;
            let fwd = |k: usize| Action::Forward {
                mb: mb_of(k),
                chunk: (k / p) % v,
            };
            let bwd = |k: usize| Action::Backward {
                mb: mb_of(k),
                chunk: v - 1 - (k / p) % v,
            };
            let warm = ((p - rank - 1) * 2 + (v - 1) * p).min(total);
            out.extend((0..warm).map(fwd));
            for i in 0..total - warm {
                out.push(fwd(warm + i));
                out.push(bwd(i));
            }
            out.extend((total - warm..total).map(bwd));
        }
        ScheduleKind::ZbH1 => {
            let bi = |mb: usize| Action::BackwardInput { mb, chunk: 0 };
            let w = |mb: usize| Action::BackwardWeight { mb, chunk: 0 };
            let (mut nf, mut nb, mut nw) = (0, 0, 0);
            // Warm-up: 1F1B's p-1-s forwards plus its first steady forward.
            while nf < (p - rank).min(m) {
                out.push(f(nf));
                nf += 1;
            }
            // B F, without W, until p micro-batches are in flight.
            for _ in 0..rank {
                if nf == m {
                    break;
                }
                out.push(bi(nb));
                nb += 1;
                out.push(f(nf));
                nf += 1;
            }
            // Steady state: B W F (the W frees a micro-batch before the F takes one, so at most
            // p are in flight).
            while nf < m {
                out.push(bi(nb));
                nb += 1;
                out.push(w(nw));
                nw += 1;
                out.push(f(nf));
                nf += 1;
            }
            // Cool-down: B W, then the deferred Ws fill the bubble.
            while nb < m {
                out.push(bi(nb));
                nb += 1;
                out.push(w(nw));
                nw += 1;
            }
            out.extend((nw..m).map(w));
        }
    }
    out
}

/// Adds transfers and recomputation around `rank`'s compute actions.
fn weave(
    placement: &Placement,
    rank: usize,
    compute: &[Action],
    recompute: &[bool],
) -> Vec<Action> {
    let last = placement.stages() - 1;
    let next = placement.next_rank(rank);
    let prev = placement.prev_rank(rank);
    let mut out = Vec::with_capacity(compute.len() * 3);
    for &a in compute {
        let (mb, chunk) = (a.mb(), a.chunk());
        let s = placement.stage(rank, chunk);
        match a {
            Action::Forward { .. } => {
                if s > 0 {
                    out.push(Action::RecvAct {
                        mb,
                        chunk,
                        peer: prev,
                    });
                }
                out.push(a);
                if s < last {
                    out.push(Action::SendAct {
                        mb,
                        chunk,
                        peer: next,
                    });
                }
            }
            Action::Backward { .. } | Action::BackwardInput { .. } => {
                if recompute.get(s).copied().unwrap_or(false) {
                    out.push(Action::Recompute { mb, chunk });
                }
                if s < last {
                    out.push(Action::RecvGrad {
                        mb,
                        chunk,
                        peer: next,
                    });
                }
                out.push(a);
                if s > 0 {
                    out.push(Action::SendGrad {
                        mb,
                        chunk,
                        peer: prev,
                    });
                }
            }
            _ => out.push(a),
        }
    }
    out
}

/// Where the actions of one `(mb, chunk)` sit in one rank's list (positions), for [`Schedule::check`].
#[derive(Clone, Copy, Default)]
struct Slot {
    forward: Option<usize>,
    recompute: Option<usize>,
    backward: Option<usize>,
    backward_input: Option<usize>,
    backward_weight: Option<usize>,
    send_act: Option<usize>,
    recv_act: Option<usize>,
    send_grad: Option<usize>,
    recv_grad: Option<usize>,
}

impl Schedule {
    /// Rank `rank`'s actions in order (empty for a rank that does not exist).
    pub fn actions(&self, rank: usize) -> &[Action] {
        self.ranks.get(rank).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Pipeline-parallel size (ranks).
    pub fn pp(&self) -> usize {
        self.placement.pp
    }

    /// Number of global stages, `pp * chunks`.
    pub fn stages(&self) -> usize {
        self.placement.stages()
    }

    /// The global stage an action of `rank` works on.
    pub fn stage_of(&self, rank: usize, action: &Action) -> usize {
        self.placement.stage(rank, action.chunk())
    }

    /// Structural proof that the schedule is complete and consistent (it says nothing about
    /// deadlocks; [`super::simulate::simulate`] finds those):
    ///
    /// - one list per rank, one `recompute` flag per stage, every `mb` and `chunk` in range;
    /// - per stage and micro-batch exactly one `Forward` and either exactly one `Backward` or one
    ///   `BackwardInput` followed by one `BackwardWeight`, the forward first;
    /// - a `Recompute` exactly on recomputing stages, between the forward and the backward;
    /// - a `RecvAct` before each forward of a stage `s > 0` and a `SendAct` after each forward of
    ///   a stage `s < last`; a `RecvGrad` before each (input) backward of a stage `s < last` and a
    ///   `SendGrad` after it on `s > 0`; no other transfers; peers are the next / previous rank;
    /// - every send has exactly one matching receive (same [`Placement::tag`]) on its peer, and
    ///   every receive exactly one matching send.
    pub fn check(&self) -> Result<()> {
        const OP: &str = "schedule check";
        let pl = self.placement;
        let m = self.microbatches;
        if pl.pp == 0 || pl.chunks == 0 || m == 0 {
            return Err(Error::invalid(
                OP,
                "schedule",
                format!(
                    "pp = {}, chunks = {}, microbatches = {}: all must be at least 1",
                    pl.pp, pl.chunks, m
                ),
            ));
        }
        let stages = match pl.pp.checked_mul(pl.chunks) {
            Some(s) if s.checked_mul(m).is_some_and(|n| n <= MAX_STAGE_PASSES) => s,
            _ => {
                return Err(Error::invalid(
                    OP,
                    "schedule",
                    format!("pp * chunks * microbatches exceeds {MAX_STAGE_PASSES}"),
                ))
            }
        };
        if self.ranks.len() != pl.pp {
            return Err(Error::invalid(
                OP,
                "ranks",
                format!("{} action lists for pp = {}", self.ranks.len(), pl.pp),
            ));
        }
        if self.recompute.len() != stages {
            return Err(Error::invalid(
                OP,
                "recompute",
                format!("{} flags for {stages} stages", self.recompute.len()),
            ));
        }
        let last = stages - 1;
        // (from, to, tag) -> (rank, position) of the send / receive.
        let mut sends = std::collections::BTreeMap::new();
        let mut recvs = std::collections::BTreeMap::new();
        for (rank, list) in self.ranks.iter().enumerate() {
            let bad = |i: usize, a: &Action, why: String| {
                Error::invalid(
                    OP,
                    format!("rank {rank}"),
                    format!("{a} at position {i}: {why}"),
                )
            };
            let mut slots = vec![Slot::default(); pl.chunks * m];
            for (i, a) in list.iter().enumerate() {
                if a.mb() >= m {
                    return Err(bad(
                        i,
                        a,
                        format!("micro-batch out of range (microbatches = {m})"),
                    ));
                }
                if a.chunk() >= pl.chunks {
                    return Err(bad(
                        i,
                        a,
                        format!("chunk out of range (chunks = {})", pl.chunks),
                    ));
                }
                let s = pl.stage(rank, a.chunk());
                let slot = &mut slots[a.chunk() * m + a.mb()];
                let (field, expected_peer, allowed) = match a {
                    Action::Forward { .. } => (&mut slot.forward, None, true),
                    Action::Recompute { .. } => (&mut slot.recompute, None, self.recompute[s]),
                    Action::Backward { .. } => (&mut slot.backward, None, true),
                    Action::BackwardInput { .. } => (&mut slot.backward_input, None, true),
                    Action::BackwardWeight { .. } => (&mut slot.backward_weight, None, true),
                    Action::SendAct { .. } => {
                        (&mut slot.send_act, Some(pl.next_rank(rank)), s < last)
                    }
                    Action::RecvAct { .. } => (&mut slot.recv_act, Some(pl.prev_rank(rank)), s > 0),
                    Action::SendGrad { .. } => {
                        (&mut slot.send_grad, Some(pl.prev_rank(rank)), s > 0)
                    }
                    Action::RecvGrad { .. } => {
                        (&mut slot.recv_grad, Some(pl.next_rank(rank)), s < last)
                    }
                };
                if !allowed {
                    let why = if a.kind() == super::action::ActionKind::Recompute {
                        format!("stage {s} does not recompute")
                    } else {
                        format!("stage {s} of {stages} has no such transfer")
                    };
                    return Err(bad(i, a, why));
                }
                if let Some(prev) = *field {
                    return Err(bad(i, a, format!("duplicate (already at position {prev})")));
                }
                *field = Some(i);
                if let (Some(want), Some(peer)) = (expected_peer, a.peer()) {
                    if peer != want {
                        return Err(bad(i, a, format!("wrong peer, expected rank {want}")));
                    }
                    let tag = pl
                        .tag(rank, a)
                        .ok_or_else(|| bad(i, a, "no message tag (tag overflow)".to_string()))?;
                    let (map, key) = match a {
                        Action::SendAct { .. } | Action::SendGrad { .. } => {
                            (&mut sends, (rank, peer, tag))
                        }
                        _ => (&mut recvs, (peer, rank, tag)),
                    };
                    if let Some((r, j)) = map.insert(key, (rank, i)) {
                        return Err(bad(
                            i,
                            a,
                            format!("same message tag as position {j} of rank {r}"),
                        ));
                    }
                }
            }
            for chunk in 0..pl.chunks {
                for mb in 0..m {
                    let sl = slots[chunk * m + mb];
                    let s = pl.stage(rank, chunk);
                    let miss = |what: &str| {
                        Error::invalid(
                            OP,
                            format!("rank {rank}"),
                            format!("mb {mb}, chunk {chunk} (stage {s}): {what}"),
                        )
                    };
                    let f = sl.forward.ok_or_else(|| miss("no Forward"))?;
                    let b = match (sl.backward, sl.backward_input, sl.backward_weight) {
                        (Some(b), None, None) => b,
                        (None, Some(bi), Some(w)) => {
                            if w < bi {
                                return Err(miss("BackwardWeight before its BackwardInput"));
                            }
                            bi
                        }
                        (None, None, None) => return Err(miss("no backward")),
                        (Some(_), _, _) => {
                            return Err(miss("both a Backward and a split BackwardInput/Weight"))
                        }
                        (None, Some(_), None) => {
                            return Err(miss("BackwardInput without BackwardWeight"))
                        }
                        (None, None, Some(_)) => {
                            return Err(miss("BackwardWeight without BackwardInput"))
                        }
                    };
                    if b < f {
                        return Err(miss("backward before its Forward"));
                    }
                    match (self.recompute[s], sl.recompute) {
                        (true, None) => return Err(miss("recomputing stage without a Recompute")),
                        (true, Some(r)) if !(f < r && r < b) => {
                            return Err(miss("Recompute not between the Forward and the backward"))
                        }
                        _ => {}
                    }
                    if s > 0 {
                        let r = sl
                            .recv_act
                            .ok_or_else(|| miss("no RecvAct for the Forward"))?;
                        if r > f {
                            return Err(miss("RecvAct after the Forward that consumes it"));
                        }
                        let x = sl
                            .send_grad
                            .ok_or_else(|| miss("no SendGrad after the backward"))?;
                        if x < b {
                            return Err(miss("SendGrad before the backward that produces it"));
                        }
                    }
                    if s < last {
                        let x = sl
                            .send_act
                            .ok_or_else(|| miss("no SendAct after the Forward"))?;
                        if x < f {
                            return Err(miss("SendAct before the Forward that produces it"));
                        }
                        let r = sl
                            .recv_grad
                            .ok_or_else(|| miss("no RecvGrad for the backward"))?;
                        if r > b {
                            return Err(miss("RecvGrad after the backward that consumes it"));
                        }
                    }
                }
            }
        }
        for (&(from, to, tag), &(rank, i)) in &sends {
            if !recvs.contains_key(&(from, to, tag)) {
                return Err(Error::invalid(
                    OP,
                    format!("rank {rank}"),
                    format!(
                        "{} at position {i}: no matching receive on rank {to}",
                        self.ranks[rank][i]
                    ),
                ));
            }
        }
        for (&(from, to, tag), &(rank, i)) in &recvs {
            if !sends.contains_key(&(from, to, tag)) {
                return Err(Error::invalid(
                    OP,
                    format!("rank {rank}"),
                    format!(
                        "{} at position {i}: no matching send on rank {from}",
                        self.ranks[rank][i]
                    ),
                ));
            }
        }
        Ok(())
    }
}
