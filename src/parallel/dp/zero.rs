//! ZeRO stage 1: the optimizer state sharded over the data-parallel group (Rajbhandari et al.,
//! "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models"; Megatron's
//! distributed optimizer).
//!
//! Every parameter is laid end to end in one flat f32 space of `Ψ` elements, cut into `dp`
//! contiguous shards (the first `Ψ mod dp` shards one element longer: uneven sizes work). Rank
//! `r` keeps, for its shard only, the f32 master copy of the parameters and AdamW's two
//! moments. A step:
//! 1. packs the local gradients into the flat f32 buffer,
//! 2. reduce-scatters it (average) so rank `r` gets the averaged gradient of its shard,
//! 3. updates its master shard with AdamW,
//! 4. all-gathers the master shards into the flat buffer and unpacks it into the parameters
//!    (rounded once to their dtype, e.g. bf16).
//!
//! With the thread backend's fixed summation order, the averaged gradients are bitwise those of
//! an all-reduce, so an f32 ZeRO-1 step is bitwise the plain data-parallel step.
//!
//! Memory per rank ([`ZeroMemory`]): parameters in their dtype, the f32 flat gradient buffer
//! (`4Ψ`, not sharded: stage 1), and `12Ψ/dp` bytes of optimizer state (master + 2 moments) —
//! ZeRO's `(2 + 2 + K/N_d)Ψ` with `K = 12` for bf16 parameters and bf16 gradients; ours keeps
//! f32 gradients, so `(2 + 4 + 12/dp)Ψ`. ZeRO-2 (sharded gradients) is not implemented.

use std::ops::Range;

use crate::comm::{Communicator, ReduceOp};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::shard::{pack, unpack};
use crate::ops::{adamw_step, AdamW};
use crate::stream::Stream;
use crate::tensor::Tensor;

/// Bytes a rank holds for the model's training state under ZeRO-1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZeroMemory {
    /// The parameters, in their own dtype (replicated).
    pub params: usize,
    /// The flat f32 gradient buffer (replicated under stage 1).
    pub grads: usize,
    /// Master copy and two moments of this rank's shard, f32.
    pub optimizer: usize,
}

impl ZeroMemory {
    /// The total.
    pub fn total(&self) -> usize {
        self.params + self.grads + self.optimizer
    }
}

/// The ZeRO-1 optimizer of one data-parallel rank (see the [module docs](self)).
pub struct Zero1 {
    numels: Vec<usize>,
    offsets: Vec<usize>,
    counts: Vec<usize>,
    shard: Range<usize>,
    param_bytes: usize,
    flat: Tensor,
    shard_grad: Tensor,
    master: Tensor,
    m: Tensor,
    v: Tensor,
    cfg: AdamW,
    step: u32,
}

impl Zero1 {
    /// The optimizer for `params` (in a fixed order, the same on every rank of `group`), whose
    /// current values become the master copy. Enqueued on `stream`.
    ///
    /// Errors: [`Error::InvalidArgument`] for no parameters or fewer elements than ranks;
    /// dtype, device and allocation errors.
    pub fn new(
        stream: &Stream,
        group: &dyn Communicator,
        params: &[&Tensor],
        cfg: AdamW,
    ) -> Result<Zero1> {
        const OP: &str = "Zero1::new";
        if params.is_empty() {
            return Err(Error::invalid(OP, "params", "no parameters"));
        }
        let numels: Vec<usize> = params.iter().map(|p| p.numel()).collect();
        let mut offsets = Vec::with_capacity(numels.len());
        let mut total = 0usize;
        for &n in &numels {
            offsets.push(total);
            total = total
                .checked_add(n)
                .ok_or_else(|| Error::invalid(OP, "params", "total size overflows"))?;
        }
        let dp = group.size();
        if total < dp {
            return Err(Error::invalid(
                OP,
                "params",
                format!("{total} elements cannot be sharded over {dp} ranks"),
            ));
        }
        let counts: Vec<usize> = (0..dp)
            .map(|r| total / dp + usize::from(r < total % dp))
            .collect();
        let lo: usize = counts[..group.rank()].iter().sum();
        let shard = lo..lo + counts[group.rank()];
        let dev = stream.device();
        let mut flat = Tensor::zeros(dev, [total], DType::F32)?;
        for (p, &off) in params.iter().zip(&offsets) {
            pack(stream, p, &mut flat, off)?;
        }
        let n = shard.len();
        let mut master = Tensor::zeros(dev, [n], DType::F32)?;
        unpack(stream, &flat, shard.start, &mut master)?;
        Ok(Zero1 {
            param_bytes: params
                .iter()
                .map(|p| p.numel() * p.dtype().size_in_bytes())
                .sum(),
            numels,
            offsets,
            counts,
            shard,
            flat,
            shard_grad: Tensor::zeros(dev, [n], DType::F32)?,
            master,
            m: Tensor::zeros(dev, [n], DType::F32)?,
            v: Tensor::zeros(dev, [n], DType::F32)?,
            cfg,
            step: 0,
        })
    }

    /// This rank's shard of the flat parameter space.
    pub fn shard(&self) -> Range<usize> {
        self.shard.clone()
    }

    /// Every rank's shard length.
    pub fn shard_sizes(&self) -> &[usize] {
        &self.counts
    }

    /// What this rank holds (see [`ZeroMemory`]).
    pub fn memory(&self) -> ZeroMemory {
        let total: usize = self.numels.iter().sum();
        ZeroMemory {
            params: self.param_bytes,
            grads: 4 * total,
            optimizer: 3 * 4 * self.shard.len(),
        }
    }

    /// One optimizer step from this rank's local `grads` (any float dtype, one per parameter, in
    /// the constructor's order): average over `group`, update this rank's shard, and write every
    /// parameter back (all enqueued on `stream`, collectives included).
    ///
    /// Errors: [`Error::InvalidArgument`] when `params`/`grads` do not match the constructor's
    /// parameters; whatever the ops and collectives report.
    pub fn step(
        &mut self,
        stream: &Stream,
        group: &dyn Communicator,
        params: &mut [&mut Tensor],
        grads: &[&Tensor],
    ) -> Result<()> {
        const OP: &str = "Zero1::step";
        if params.len() != self.numels.len() || grads.len() != self.numels.len() {
            return Err(Error::invalid(
                OP,
                "params/grads",
                format!(
                    "{} parameters and {} gradients, the optimizer has {}",
                    params.len(),
                    grads.len(),
                    self.numels.len()
                ),
            ));
        }
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            if p.numel() != self.numels[i] || g.numel() != self.numels[i] {
                return Err(Error::invalid(
                    OP,
                    format!("parameter {i}"),
                    format!(
                        "{} / {} elements, the optimizer has {}",
                        p.numel(),
                        g.numel(),
                        self.numels[i]
                    ),
                ));
            }
        }
        for (g, &off) in grads.iter().zip(&self.offsets) {
            pack(stream, g, &mut self.flat, off)?;
        }
        group.reduce_scatter_v(
            stream,
            &self.flat,
            &mut self.shard_grad,
            &self.counts,
            ReduceOp::Avg,
        )?;
        self.step += 1;
        adamw_step(
            stream,
            &self.cfg,
            self.step,
            &mut self.master,
            &self.shard_grad,
            &mut self.m,
            &mut self.v,
        )?;
        group.all_gather_v(stream, &self.master, &mut self.flat, &self.counts)?;
        for (p, &off) in params.iter_mut().zip(&self.offsets) {
            unpack(stream, &self.flat, off, p)?;
        }
        Ok(())
    }
}
