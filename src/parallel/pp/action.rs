//! The vocabulary of a pipeline schedule: what one rank does next, and where its data comes from
//! and goes.
//!
//! A model of `pp * chunks` *stages* is spread over `pp` ranks round-robin: stage `s` lives on
//! rank `s % pp` as its local chunk `s / pp` (with one chunk per rank, stage == rank). Activations
//! always travel from stage `s` to stage `s + 1` (the next rank, cyclically) and gradients from
//! `s + 1` back to `s`.

use std::fmt;

/// One step of one rank's schedule. `mb` is the micro-batch, `chunk` the rank's local model
/// chunk (0 unless the schedule is interleaved). For the four transfer actions `chunk` is the
/// chunk *on this rank* whose data moves: a send carries the output (activation) or input
/// gradient of this rank's chunk, a receive brings the input (activation) or output gradient of
/// this rank's chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Forward of `(mb, chunk)`; keeps what its backward needs (or only the chunk's input, when
    /// the stage recomputes).
    Forward {
        /// Micro-batch.
        mb: usize,
        /// Local chunk.
        chunk: usize,
    },
    /// Re-run the forward of `(mb, chunk)` from its saved input, just before its backward
    /// (activation recomputation, GPipe's re-materialisation).
    Recompute {
        /// Micro-batch.
        mb: usize,
        /// Local chunk.
        chunk: usize,
    },
    /// Full backward of `(mb, chunk)`: input gradient and weight gradient (accumulated).
    Backward {
        /// Micro-batch.
        mb: usize,
        /// Local chunk.
        chunk: usize,
    },
    /// Zero-bubble split, first half: only the input gradient (`B` in the ZB paper).
    BackwardInput {
        /// Micro-batch.
        mb: usize,
        /// Local chunk.
        chunk: usize,
    },
    /// Zero-bubble split, second half: only the weight gradient (`W`), after its `BackwardInput`.
    BackwardWeight {
        /// Micro-batch.
        mb: usize,
        /// Local chunk.
        chunk: usize,
    },
    /// Send the output activation of `(mb, chunk)` to `peer` (the next stage's rank).
    SendAct {
        /// Micro-batch.
        mb: usize,
        /// Local chunk producing the activation.
        chunk: usize,
        /// Receiving rank.
        peer: usize,
    },
    /// Receive the input activation of `(mb, chunk)` from `peer` (the previous stage's rank).
    RecvAct {
        /// Micro-batch.
        mb: usize,
        /// Local chunk consuming the activation.
        chunk: usize,
        /// Sending rank.
        peer: usize,
    },
    /// Send the input gradient of `(mb, chunk)` to `peer` (the previous stage's rank).
    SendGrad {
        /// Micro-batch.
        mb: usize,
        /// Local chunk producing the gradient.
        chunk: usize,
        /// Receiving rank.
        peer: usize,
    },
    /// Receive the output gradient of `(mb, chunk)` from `peer` (the next stage's rank).
    RecvGrad {
        /// Micro-batch.
        mb: usize,
        /// Local chunk consuming the gradient.
        chunk: usize,
        /// Sending rank.
        peer: usize,
    },
}

/// The kind of an [`Action`], without its operands (for colours, costs and counting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionKind {
    /// [`Action::Forward`].
    Forward,
    /// [`Action::Recompute`].
    Recompute,
    /// [`Action::Backward`].
    Backward,
    /// [`Action::BackwardInput`].
    BackwardInput,
    /// [`Action::BackwardWeight`].
    BackwardWeight,
    /// [`Action::SendAct`].
    SendAct,
    /// [`Action::RecvAct`].
    RecvAct,
    /// [`Action::SendGrad`].
    SendGrad,
    /// [`Action::RecvGrad`].
    RecvGrad,
}

impl ActionKind {
    /// Every kind, in declaration order.
    pub const ALL: [ActionKind; 9] = [
        ActionKind::Forward,
        ActionKind::Recompute,
        ActionKind::Backward,
        ActionKind::BackwardInput,
        ActionKind::BackwardWeight,
        ActionKind::SendAct,
        ActionKind::RecvAct,
        ActionKind::SendGrad,
        ActionKind::RecvGrad,
    ];

    /// Short label used in tables and timelines (`F`, `R`, `B`, `Bi`, `W`, `sA`, `rA`, `sG`, `rG`).
    pub fn label(self) -> &'static str {
        match self {
            ActionKind::Forward => "F",
            ActionKind::Recompute => "R",
            ActionKind::Backward => "B",
            ActionKind::BackwardInput => "Bi",
            ActionKind::BackwardWeight => "W",
            ActionKind::SendAct => "sA",
            ActionKind::RecvAct => "rA",
            ActionKind::SendGrad => "sG",
            ActionKind::RecvGrad => "rG",
        }
    }

    /// True for the compute kinds (run on the compute stream), false for transfers.
    pub fn is_compute(self) -> bool {
        matches!(
            self,
            ActionKind::Forward
                | ActionKind::Recompute
                | ActionKind::Backward
                | ActionKind::BackwardInput
                | ActionKind::BackwardWeight
        )
    }
}

impl Action {
    /// The action's kind.
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Forward { .. } => ActionKind::Forward,
            Action::Recompute { .. } => ActionKind::Recompute,
            Action::Backward { .. } => ActionKind::Backward,
            Action::BackwardInput { .. } => ActionKind::BackwardInput,
            Action::BackwardWeight { .. } => ActionKind::BackwardWeight,
            Action::SendAct { .. } => ActionKind::SendAct,
            Action::RecvAct { .. } => ActionKind::RecvAct,
            Action::SendGrad { .. } => ActionKind::SendGrad,
            Action::RecvGrad { .. } => ActionKind::RecvGrad,
        }
    }

    /// The micro-batch the action works on.
    pub fn mb(&self) -> usize {
        match *self {
            Action::Forward { mb, .. }
            | Action::Recompute { mb, .. }
            | Action::Backward { mb, .. }
            | Action::BackwardInput { mb, .. }
            | Action::BackwardWeight { mb, .. }
            | Action::SendAct { mb, .. }
            | Action::RecvAct { mb, .. }
            | Action::SendGrad { mb, .. }
            | Action::RecvGrad { mb, .. } => mb,
        }
    }

    /// The local chunk the action works on.
    pub fn chunk(&self) -> usize {
        match *self {
            Action::Forward { chunk, .. }
            | Action::Recompute { chunk, .. }
            | Action::Backward { chunk, .. }
            | Action::BackwardInput { chunk, .. }
            | Action::BackwardWeight { chunk, .. }
            | Action::SendAct { chunk, .. }
            | Action::RecvAct { chunk, .. }
            | Action::SendGrad { chunk, .. }
            | Action::RecvGrad { chunk, .. } => chunk,
        }
    }

    /// The other rank of a transfer, `None` for compute actions.
    pub fn peer(&self) -> Option<usize> {
        match *self {
            Action::SendAct { peer, .. }
            | Action::RecvAct { peer, .. }
            | Action::SendGrad { peer, .. }
            | Action::RecvGrad { peer, .. } => Some(peer),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.kind().label();
        match self.peer() {
            Some(p) => write!(f, "{k}(mb {}, chunk {}, peer {p})", self.mb(), self.chunk()),
            None => write!(f, "{k}(mb {}, chunk {})", self.mb(), self.chunk()),
        }
    }
}

/// Where the stages live: `pp` ranks, `chunks` model chunks per rank, stage `s` on rank
/// `s % pp` as local chunk `s / pp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Placement {
    /// Pipeline-parallel size (ranks).
    pub pp: usize,
    /// Model chunks per rank (`v`; 1 unless interleaved).
    pub chunks: usize,
}

impl Placement {
    /// Number of stages, `pp * chunks`.
    pub fn stages(&self) -> usize {
        self.pp * self.chunks
    }

    /// The global stage of `chunk` on `rank`.
    pub fn stage(&self, rank: usize, chunk: usize) -> usize {
        chunk * self.pp + rank
    }

    /// `(rank, chunk)` of global stage `s`.
    pub fn locate(&self, stage: usize) -> (usize, usize) {
        (stage % self.pp, stage / self.pp)
    }

    /// The rank that receives this rank's activations (next stage), cyclically.
    pub fn next_rank(&self, rank: usize) -> usize {
        (rank + 1) % self.pp
    }

    /// The rank that receives this rank's gradients (previous stage), cyclically.
    pub fn prev_rank(&self, rank: usize) -> usize {
        (rank + self.pp - 1) % self.pp
    }

    /// The message tag of a transfer: unique per (direction, micro-batch, receiving stage), so a
    /// send and its receive agree on it from their own view.
    pub fn tag(&self, rank: usize, action: &Action) -> Option<u32> {
        let stages = self.stages();
        let (dir, recv_stage) = match *action {
            Action::SendAct { chunk, .. } => (0, self.stage(rank, chunk) + 1),
            Action::RecvAct { chunk, .. } => (0, self.stage(rank, chunk)),
            Action::SendGrad { chunk, .. } => (1, self.stage(rank, chunk).checked_sub(1)?),
            Action::RecvGrad { chunk, .. } => (1, self.stage(rank, chunk)),
            _ => return None,
        };
        let t = (action.mb() * stages + recv_stage) * 2 + dir;
        u32::try_from(t).ok()
    }
}
