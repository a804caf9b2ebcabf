//! What a communication call is, as compared across ranks in checked mode.

use crate::dtype::DType;
use std::fmt;
use std::sync::Arc;

/// A reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Sum divided by the number of ranks.
    Avg,
    /// Element-wise maximum (NaN propagates).
    Max,
    /// Element-wise minimum (NaN propagates).
    Min,
}

/// The kind of a communication call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CollOp {
    /// All-reduce.
    AllReduce,
    /// All-gather (even or explicit counts).
    AllGather,
    /// Reduce-scatter (even or explicit counts).
    ReduceScatter,
    /// Broadcast.
    Broadcast,
    /// Barrier.
    Barrier,
    /// Point-to-point send.
    Send,
    /// Point-to-point receive.
    Recv,
    /// Communicator split.
    Split,
    /// All-gather fused with the GEMM that consumes it ([`super::Communicator::all_gather_gemm`]).
    AllGatherGemm,
    /// GEMM fused with the reduce-scatter of its result
    /// ([`super::Communicator::gemm_reduce_scatter`]).
    GemmReduceScatter,
}

impl CollOp {
    /// snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            CollOp::AllReduce => "all_reduce",
            CollOp::AllGather => "all_gather",
            CollOp::ReduceScatter => "reduce_scatter",
            CollOp::Broadcast => "broadcast",
            CollOp::Barrier => "barrier",
            CollOp::Send => "send",
            CollOp::Recv => "recv",
            CollOp::Split => "split",
            CollOp::AllGatherGemm => "all_gather_gemm",
            CollOp::GemmReduceScatter => "gemm_reduce_scatter",
        }
    }
}

/// A call's signature: ranks' calls at the same sequence number must have equal signatures.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Signature {
    /// The call.
    pub op: CollOp,
    /// Element type (None for barrier/split).
    pub dtype: Option<DType>,
    /// Element counts: for all-gather / reduce-scatter the per-rank block counts, else one count.
    /// Shared, so that a signature is cloned (to every rank's view of a rendezvous) without
    /// touching the heap.
    pub counts: Arc<[usize]>,
    /// Root (broadcast).
    pub root: Option<usize>,
    /// Reduction (all-reduce, reduce-scatter).
    pub redop: Option<ReduceOp>,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(", self.op.name())?;
        let mut parts = Vec::new();
        if let Some(d) = self.dtype {
            parts.push(d.name().to_string());
        }
        if !self.counts.is_empty() {
            if self.counts.len() == 1 {
                parts.push(format!("count={}", self.counts[0]));
            } else {
                parts.push(format!("counts={:?}", self.counts));
            }
        }
        if let Some(r) = self.root {
            parts.push(format!("root={r}"));
        }
        if let Some(o) = self.redop {
            parts.push(format!("{o:?}").to_lowercase());
        }
        write!(f, "{})", parts.join(", "))
    }
}
