//! Cutting a rank's shard from a full parameter, and gathering the shards back: the one place
//! that defines how the tensor-parallel layers split their weights (Megatron's
//! `partition_dim`).
//!
//! | parameter | full | [`Partition`] | rank `r`'s shard (`p` = tensor-parallel size) |
//! |-----------|------|---------------|-----------------------------------------------|
//! | [`ColumnParallelLinear`](super::ColumnParallelLinear) weight | `[out, in]` | [`Partition::First`] | rows `r*out/p .. (r+1)*out/p`: `[out/p, in]` |
//! | its bias | `[out]` | [`Partition::First`] | `r*out/p .. (r+1)*out/p`: `[out/p]` |
//! | [`RowParallelLinear`](super::RowParallelLinear) weight | `[out, in]` | [`Partition::Last`] | columns `r*in/p .. (r+1)*in/p` of every row: `[out, in/p]` |
//! | its bias | `[out]` | [`Partition::Replicated`] | the whole bias, on every rank |
//!
//! [`cut_shard`] / [`shard_of`] take rank `r`'s block from a full tensor (a stream-ordered copy,
//! no communication); [`gather_shards`] is the inverse over the group: every rank contributes its
//! shard and receives the full tensor (an all-gather; used to compare sharded weights and
//! gradients with a single-device computation, or to checkpoint them). A dimension that does
//! not split evenly is [`Error::NotDivisible`] naming the tensor, the dimension and the
//! tensor-parallel size.

use crate::comm::{Communicator, Work};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::shard as copies;
use crate::parallel::tp::mappings;
use crate::stream::Stream;
use crate::tensor::Tensor;

/// How a parameter is split over the tensor-parallel group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    /// Split along the first dimension into contiguous blocks (Megatron `partition_dim = 0`):
    /// the column-parallel weight `[out, in]` and bias `[out]`.
    First,
    /// Split along the last dimension, block `r` of every row (Megatron `partition_dim = 1`):
    /// the row-parallel weight `[out, in]`.
    Last,
    /// Not split: every rank holds the whole tensor (the row-parallel bias).
    Replicated,
}

impl Partition {
    fn axis(self, rank: usize) -> Option<usize> {
        match self {
            Partition::First => Some(0),
            Partition::Last => Some(rank - 1),
            Partition::Replicated => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Partition::First => "first dimension",
            Partition::Last => "last dimension",
            Partition::Replicated => "no dimension",
        }
    }
}

/// The shape of one shard of a tensor of shape `full` split `parts` ways by `partition`.
///
/// Errors: [`Error::NotDivisible`] when the split dimension does not divide by `parts`
/// (naming `what`, the dimension and the full shape), [`Error::InvalidArgument`] when `parts`
/// is 0 or `full` has rank 0.
pub fn shard_dims(
    what: &str,
    full: &[usize],
    partition: Partition,
    parts: usize,
) -> Result<Vec<usize>> {
    const OP: &str = "tp::shard::shard_dims";
    if parts == 0 {
        return Err(Error::invalid(
            OP,
            "tensor-parallel size",
            "must be at least 1",
        ));
    }
    if full.is_empty() {
        return Err(Error::invalid(
            OP,
            what,
            "a rank-0 tensor cannot be sharded",
        ));
    }
    let mut dims = full.to_vec();
    if let Some(a) = partition.axis(full.len()) {
        if dims[a] % parts != 0 {
            return Err(Error::NotDivisible {
                what: format!("{what}: {} of {full:?}", partition.name()),
                dim: dims[a],
                parts,
                why: "tensor-parallel size".into(),
            });
        }
        dims[a] /= parts;
    }
    Ok(dims)
}

/// The full shape whose shards (split `parts` ways by `partition`) have shape `shard`.
pub fn full_dims(shard: &[usize], partition: Partition, parts: usize) -> Vec<usize> {
    let mut dims = shard.to_vec();
    if let Some(a) = partition.axis(shard.len().max(1)) {
        if let Some(d) = dims.get_mut(a) {
            *d *= parts;
        }
    }
    dims
}

fn check_rank(op: &'static str, rank: usize, parts: usize) -> Result<()> {
    if parts == 0 {
        return Err(Error::invalid(
            op,
            "tensor-parallel size",
            "must be at least 1",
        ));
    }
    if rank >= parts {
        return Err(Error::InvalidRank {
            op,
            rank,
            size: parts,
        });
    }
    Ok(())
}

/// Enqueues on `stream` the copy of rank `rank`'s block of `full` (split `parts` ways by
/// `partition`) into `shard`, a caller-provided tensor of shape [`shard_dims`] and the dtype of
/// `full` (f32, bf16 or f16; CPU backend).
///
/// Errors: [`Error::NotDivisible`], [`Error::InvalidRank`] (`rank >= parts`), and the usual
/// shape, dtype, device and aliasing errors, all before anything is enqueued.
pub fn cut_shard(
    stream: &Stream,
    full: &Tensor,
    partition: Partition,
    rank: usize,
    parts: usize,
    shard: &mut Tensor,
) -> Result<()> {
    const OP: &str = "tp::shard::cut_shard";
    check_rank(OP, rank, parts)?;
    let want = shard_dims("full", full.dims(), partition, parts)?;
    if shard.dims() != want.as_slice() {
        return Err(Error::ShapeMismatch {
            op: OP,
            what: "shard".into(),
            expected: want,
            got: shard.dims().to_vec(),
        });
    }
    match partition {
        Partition::First => copies::split_first(stream, full, rank, parts, shard),
        Partition::Last => copies::split_last(stream, full, rank, parts, shard),
        Partition::Replicated => copies::copy(stream, full, shard),
    }
}

/// [`cut_shard`] into a new tensor on `stream`'s device (ready on `stream` once the copy has
/// run; other streams must wait on an event recorded on `stream`).
pub fn shard_of(
    stream: &Stream,
    full: &Tensor,
    partition: Partition,
    rank: usize,
    parts: usize,
) -> Result<Tensor> {
    const OP: &str = "tp::shard::shard_of";
    check_rank(OP, rank, parts)?;
    stream.same_device(OP, "full", full.device())?;
    let dims = shard_dims("full", full.dims(), partition, parts)?;
    let mut shard = Tensor::poisoned(stream.device(), dims, full.dtype())?;
    cut_shard(stream, full, partition, rank, parts, &mut shard)?;
    Ok(shard)
}

/// The inverse of [`cut_shard`] over the group `comm`: every rank passes its shard and receives
/// the full tensor in `full` (shape [`full_dims`], the shard's dtype: f32 or bf16, what the
/// communicators carry). [`Partition::First`] is one all-gather; [`Partition::Last`] an
/// all-gather plus a re-interleaving copy; [`Partition::Replicated`] a local copy (every rank
/// already holds the whole tensor). Every rank of the group must call it (a collective).
///
/// Asynchronous on `stream` like the mappings: the returned [`Work`] stands for the last step.
/// Errors: the usual shape, dtype and device errors, before anything is enqueued.
pub fn gather_shards(
    stream: &Stream,
    comm: &dyn Communicator,
    shard: &Tensor,
    partition: Partition,
    full: &mut Tensor,
) -> Result<Work> {
    const OP: &str = "tp::shard::gather_shards";
    if shard.shape().rank() == 0 {
        return Err(Error::RankMismatch {
            op: OP,
            what: "shard (at least)".into(),
            expected: 1,
            got: vec![],
        });
    }
    stream.same_device(OP, "shard", shard.device())?;
    stream.same_device(OP, "full", full.device())?;
    if !matches!(shard.dtype(), DType::F32 | DType::BF16) {
        return Err(Error::UnsupportedDType {
            op: OP,
            what: "shard (communicators carry f32 and bf16)".into(),
            dtype: shard.dtype(),
        });
    }
    if full.dtype() != shard.dtype() {
        return Err(Error::DTypeMismatch {
            op: OP,
            what: "full".into(),
            expected: shard.dtype(),
            got: full.dtype(),
        });
    }
    let want = full_dims(shard.dims(), partition, comm.size());
    if full.dims() != want.as_slice() {
        return Err(Error::ShapeMismatch {
            op: OP,
            what: "full".into(),
            expected: want,
            got: full.dims().to_vec(),
        });
    }
    match partition {
        Partition::First => mappings::gather_from_sp_region_fwd(stream, comm, shard, full),
        Partition::Last => mappings::gather_from_tp_region_fwd(stream, comm, shard, full),
        Partition::Replicated => mappings::copy_to_tp_region_fwd(stream, comm, shard, full),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_shapes() {
        assert_eq!(
            shard_dims("w", &[12, 5], Partition::First, 3).unwrap(),
            [4, 5]
        );
        assert_eq!(
            shard_dims("w", &[5, 12], Partition::Last, 4).unwrap(),
            [5, 3]
        );
        assert_eq!(
            shard_dims("b", &[7], Partition::Replicated, 4).unwrap(),
            [7]
        );
        assert_eq!(full_dims(&[5, 3], Partition::Last, 4), [5, 12]);
        assert_eq!(full_dims(&[3], Partition::First, 4), [12]);
        let e =
            shard_dims("ColumnParallelLinear weight", &[10, 4], Partition::First, 3).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotDivisible {
                    dim: 10,
                    parts: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("ColumnParallelLinear weight"));
    }
}
