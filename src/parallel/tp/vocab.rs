//! The vocabulary split across the tensor-parallel group: Megatron-Core's
//! `VocabParallelEmbedding` and `vocab_parallel_cross_entropy`.
//!
//! Rank `r` of a group of `w` owns the vocabulary rows `[r·V/w, (r+1)·V/w)` ([`vocab_range`]).
//! `V` must divide by `w`; pad the vocabulary the way Megatron does with
//! [`padded_vocab_size`] (round up to a multiple of `divisible_by · w`, default 128 · w) and
//! give the padding rows any weights: no target ever names them.
//!
//! - **Embedding**: each rank looks up the tokens in its range (others give zero rows), then
//!   the rows are summed over the group (all-reduce): `[n] -> [n, h]`, replicated. Backward
//!   adds each output-gradient row into the weight-gradient row of its token, on the rank that
//!   owns it, in token order (deterministic); no communication.
//! - **Embedding under sequence parallelism**
//!   ([`VocabParallelEmbeddingConfig::sequence_parallel`], off by default), as Megatron-Core's
//!   `VocabParallelEmbedding` with `reduce_scatter_embeddings`: the summed rows are
//!   reduce-scattered along the tokens instead of all-reduced
//!   ([`reduce_scatter_to_sp_region_fwd`]), so rank `r` gets only its chunk
//!   `[r·n/w, (r+1)·n/w)` of the output, `[n/w, h]`, the sequence-parallel input of the first
//!   transformer block. The tokens are still all `n` of them on every rank. Backward takes this
//!   rank's `[n/w, h]` chunk of the output gradient, all-gathers it along the tokens
//!   ([`reduce_scatter_to_sp_region_bwd`]) and accumulates as above. `n` must divide by `w`
//!   ([`Error::NotDivisible`] otherwise, before anything is enqueued). Exactly one rank
//!   contributes a nonzero row per token, so the output rows are the table's rows exactly, with
//!   or without sequence parallelism, and so is the gathered gradient.
//! - **Cross-entropy** never gathers the logits: per row, the max over the shard is
//!   all-reduced (max), then the target's logit (on the rank that owns it, 0 elsewhere) and the
//!   shard's sum of `exp(logit - max)` are all-reduced (sum, packed into one call), and
//!   `loss = ln(sum) + max - logit[target]`. The shard's `exp(logit - max) / sum` is kept for the
//!   backward, which is local: `dlogits = (softmax - onehot) · dloss`. Two all-reduces of
//!   `n` and `2n` f32 per step instead of gathering `n · V` logits.

use crate::comm::{Communicator, ReduceOp, Work};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::launch::{enqueue_host, float_dispatch, prepare};
use crate::parallel::tp::mappings::{
    reduce_scatter_to_sp_region_bwd, reduce_scatter_to_sp_region_fwd,
};
use crate::stream::Stream;
use crate::tensor::{view, view_mut, Tensor};
use crate::Element;

/// Megatron's padded vocabulary size: `vocab` rounded up to a multiple of `divisible_by · tp`
/// (Megatron's `make_vocab_size_divisible_by`, default 128).
pub fn padded_vocab_size(vocab: usize, tp: usize, divisible_by: usize) -> usize {
    let m = divisible_by.max(1) * tp.max(1);
    vocab.div_ceil(m) * m
}

/// The vocabulary rows `[start, end)` rank `rank` of `tp` owns; [`Error::NotDivisible`] when
/// `vocab` does not divide by `tp` (pad it first: [`padded_vocab_size`]).
pub fn vocab_range(vocab: usize, rank: usize, tp: usize) -> Result<(usize, usize)> {
    if tp == 0 || vocab % tp != 0 {
        return Err(Error::NotDivisible {
            what: "vocabulary".into(),
            dim: vocab,
            parts: tp,
            why: "tensor-parallel size (pad with padded_vocab_size)".into(),
        });
    }
    let per = vocab / tp;
    Ok((rank * per, (rank + 1) * per))
}

fn check_targets(op: &'static str, t: &[i32], classes: usize) -> Result<()> {
    match t.iter().position(|&c| c < 0 || c as usize >= classes) {
        None => Ok(()),
        Some(position) => Err(Error::IndexOutOfRange {
            op,
            position,
            index: i64::from(t[position]),
            classes,
        }),
    }
}

fn need(
    op: &'static str,
    what: &str,
    t: &Tensor,
    dims: &[usize],
    dtype: Option<DType>,
) -> Result<()> {
    if t.dims() != dims {
        return Err(Error::ShapeMismatch {
            op,
            what: what.into(),
            expected: dims.to_vec(),
            got: t.dims().to_vec(),
        });
    }
    if let Some(d) = dtype {
        if t.dtype() != d {
            return Err(Error::DTypeMismatch {
                op,
                what: what.into(),
                expected: d,
                got: t.dtype(),
            });
        }
    }
    Ok(())
}

fn float(op: &'static str, what: &str, t: &Tensor) -> Result<()> {
    match t.dtype() {
        DType::F32 | DType::BF16 => Ok(()),
        d => Err(Error::UnsupportedDType {
            op,
            what: what.into(),
            dtype: d,
        }),
    }
}

// ---- cross-entropy -------------------------------------------------------------------------------

/// What the cross-entropy forward keeps for its backward: the shard's softmax (f32).
#[derive(Debug)]
pub struct CrossEntropyContext {
    softmax: Tensor,
    vocab: usize,
    start: usize,
}

impl CrossEntropyContext {
    /// The shard of the softmax, `[n, V/tp]` f32.
    pub fn softmax(&self) -> &Tensor {
        &self.softmax
    }
}

/// Forward: `losses[r] = logsumexp over the whole vocabulary of logits[r, :] - logits[r,
/// targets[r]]`, from this rank's shard `logits` `[n, V/tp]` (f32 or bf16) and the global
/// `targets` (i32 `[n]`, the same on every rank). `losses` (f32 `[n]`) is the same on every rank.
/// Returns the context for [`vocab_parallel_cross_entropy_bwd`]; the losses are ready when the
/// stream reaches this point (no host wait).
pub fn vocab_parallel_cross_entropy_fwd(
    stream: &Stream,
    comm: &dyn Communicator,
    logits: &Tensor,
    targets: &Tensor,
    losses: &mut Tensor,
) -> Result<CrossEntropyContext> {
    const OP: &str = "vocab_parallel_cross_entropy_fwd";
    if logits.dims().len() != 2 || logits.numel() == 0 {
        return Err(Error::invalid(
            OP,
            "logits",
            format!(
                "must be a non-empty [n, V/tp] matrix, got {:?}",
                logits.dims()
            ),
        ));
    }
    float(OP, "logits", logits)?;
    let (n, vs) = (logits.dims()[0], logits.dims()[1]);
    need(OP, "targets", targets, &[n], Some(DType::I32))?;
    need(OP, "losses", losses, &[n], Some(DType::F32))?;
    let (w, rank) = (comm.size(), comm.rank());
    let vocab = vs * w;
    let start = rank * vs;
    let dev: &Device = stream.device();
    let mut maxes = Tensor::zeros(dev, [n], DType::F32)?;
    let mut stats = Tensor::zeros(dev, [2, n], DType::F32)?;
    let softmax = Tensor::zeros(dev, [n, vs], DType::F32)?;
    let dtype = logits.dtype();

    // 1. Row max over the shard, then over the group.
    {
        let reads = [("logits", logits)];
        let writes = [("maxes", &maxes)];
        prepare(stream, OP, &reads, &writes)?;
        enqueue_host(stream, OP, &reads, &writes, move |l| {
            let (r, mut wr) = l.io();
            let out = view_mut::<f32>(&mut *wr[0]);
            float_dispatch!(dtype, T => {
                let x = view::<T>(r[0]);
                for (i, m) in out.iter_mut().enumerate() {
                    *m = x[i * vs..(i + 1) * vs]
                        .iter()
                        .fold(f32::NEG_INFINITY, |a, &v| a.max(v.to_f32()));
                }
            });
            Ok(())
        });
    }
    comm.all_reduce(stream, &mut maxes, ReduceOp::Max)?;

    // 2. The target's logit (owner only) and the shard's sum of exp, packed for one all-reduce;
    //    the unnormalised exp kept in `softmax`.
    {
        let reads = [("logits", logits), ("targets", targets), ("maxes", &maxes)];
        let writes = [("stats", &stats), ("softmax", &softmax)];
        prepare(stream, OP, &reads, &writes)?;
        enqueue_host(stream, OP, &reads, &writes, move |l| {
            let (r, mut wr) = l.io();
            let t = view::<i32>(r[1]);
            check_targets(OP, t, vocab)?;
            let mx = view::<f32>(r[2]);
            let mut outs = wr.iter_mut();
            let st = view_mut::<f32>(outs.next().expect("stats"));
            let sm = view_mut::<f32>(outs.next().expect("softmax"));
            let (pred, sums) = st.split_at_mut(n);
            float_dispatch!(dtype, T => {
                let x = view::<T>(r[0]);
                for i in 0..n {
                    let row = &x[i * vs..(i + 1) * vs];
                    let e = &mut sm[i * vs..(i + 1) * vs];
                    let mut s = 0.0f32;
                    for (o, &v) in e.iter_mut().zip(row) {
                        *o = (v.to_f32() - mx[i]).exp();
                        s += *o;
                    }
                    sums[i] = s;
                    let tg = t[i] as usize;
                    pred[i] = if (start..start + vs).contains(&tg) {
                        row[tg - start].to_f32() - mx[i]
                    } else {
                        0.0
                    };
                }
            });
            Ok(())
        });
    }
    comm.all_reduce(stream, &mut stats, ReduceOp::Sum)?;

    // 3. loss = ln(sum) - (logit[target] - max); normalise the kept softmax.
    {
        let reads = [("stats", &stats)];
        let writes = [("losses", &*losses), ("softmax", &softmax)];
        prepare(stream, OP, &reads, &writes)?;
        enqueue_host(stream, OP, &reads, &writes, move |l| {
            let (r, mut wr) = l.io();
            let st = view::<f32>(r[0]);
            let (pred, sums) = st.split_at(n);
            let mut outs = wr.iter_mut();
            let loss = view_mut::<f32>(outs.next().expect("losses"));
            let sm = view_mut::<f32>(outs.next().expect("softmax"));
            for i in 0..n {
                loss[i] = sums[i].ln() - pred[i];
                let inv = 1.0 / sums[i];
                for v in &mut sm[i * vs..(i + 1) * vs] {
                    *v *= inv;
                }
            }
            Ok(())
        });
    }
    Ok(CrossEntropyContext {
        softmax,
        vocab,
        start,
    })
}

/// Backward (local, no communication): `dlogits[r, c] = (softmax[r, c] - [start + c ==
/// targets[r]]) · dloss[r]` for this rank's shard. `dloss` is f32 `[n]` (the same on every rank),
/// `dlogits` has the logits' shape and dtype.
pub fn vocab_parallel_cross_entropy_bwd(
    stream: &Stream,
    ctx: &CrossEntropyContext,
    targets: &Tensor,
    dloss: &Tensor,
    dlogits: &mut Tensor,
) -> Result<()> {
    const OP: &str = "vocab_parallel_cross_entropy_bwd";
    let (n, vs) = (ctx.softmax.dims()[0], ctx.softmax.dims()[1]);
    need(OP, "targets", targets, &[n], Some(DType::I32))?;
    need(OP, "dloss", dloss, &[n], Some(DType::F32))?;
    need(OP, "dlogits", dlogits, &[n, vs], None)?;
    float(OP, "dlogits", dlogits)?;
    let (vocab, start) = (ctx.vocab, ctx.start);
    let dtype = dlogits.dtype();
    let reads = [
        ("softmax", &ctx.softmax),
        ("targets", targets),
        ("dloss", dloss),
    ];
    let writes = [("dlogits", &*dlogits)];
    prepare(stream, OP, &reads, &writes)?;
    enqueue_host(stream, OP, &reads, &writes, move |l| {
        let (r, mut wr) = l.io();
        let sm = view::<f32>(r[0]);
        let t = view::<i32>(r[1]);
        check_targets(OP, t, vocab)?;
        let dl = view::<f32>(r[2]);
        float_dispatch!(dtype, T => {
            let d = view_mut::<T>(&mut *wr[0]);
            for i in 0..n {
                let tg = t[i] as usize;
                for c in 0..vs {
                    let hot = if start + c == tg { 1.0 } else { 0.0 };
                    d[i * vs + c] = T::from_f32((sm[i * vs + c] - hot) * dl[i]);
                }
            }
        });
        Ok(())
    });
    Ok(())
}

// ---- embedding ---------------------------------------------------------------------------------

/// How a [`VocabParallelEmbedding`] hands out its output (see the [module docs](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VocabParallelEmbeddingConfig {
    /// Sequence parallelism: reduce-scatter the output along the tokens (this rank's `[n/tp, h]`
    /// chunk) instead of all-reducing it (`[n, h]` on every rank); the backward then takes this
    /// rank's chunk of the output gradient and all-gathers it. Off by default.
    pub sequence_parallel: bool,
}

/// A vocabulary-parallel embedding: this rank's rows of the `[V, h]` table and their gradient
/// (f32, accumulated).
///
/// | config | `tokens` | `out` (forward) / `dout` (backward) |
/// |--------|----------|--------------------------------------|
/// | default | `[n]`, every token | `[n, h]`, replicated (all-reduce) |
/// | `sequence_parallel` | `[n]`, every token | `[n/tp, h]`, this rank's chunk of the tokens (reduce-scatter; `n` must divide by `tp`) |
#[derive(Debug)]
pub struct VocabParallelEmbedding {
    /// This rank's rows, `[V/tp, h]`.
    pub weight: Tensor,
    /// Their gradient, `[V/tp, h]` f32 (accumulated by [`VocabParallelEmbedding::backward`]).
    pub grad: Tensor,
    vocab: usize,
    start: usize,
    tp: usize,
    config: VocabParallelEmbeddingConfig,
}

/// `tokens` must be i32 `[n]`; returns `n`.
fn check_tokens(op: &'static str, tokens: &Tensor) -> Result<usize> {
    if tokens.dims().len() != 1 {
        return Err(Error::invalid(
            op,
            "tokens",
            format!("must be [n], got {:?}", tokens.dims()),
        ));
    }
    need(op, "tokens", tokens, tokens.dims(), Some(DType::I32))?;
    Ok(tokens.numel())
}

impl VocabParallelEmbedding {
    /// Takes this rank's shard `weight` (`[V/tp, h]`, f32 or bf16) of a vocabulary of
    /// `weight rows · tp` entries, with the default configuration (no sequence parallelism);
    /// the gradient starts at zero.
    pub fn new(comm: &dyn Communicator, weight: Tensor) -> Result<VocabParallelEmbedding> {
        VocabParallelEmbedding::with_config(comm, weight, VocabParallelEmbeddingConfig::default())
    }

    /// [`VocabParallelEmbedding::new`] with `config` (e.g. sequence parallelism).
    pub fn with_config(
        comm: &dyn Communicator,
        weight: Tensor,
        config: VocabParallelEmbeddingConfig,
    ) -> Result<VocabParallelEmbedding> {
        const OP: &str = "VocabParallelEmbedding::new";
        if weight.dims().len() != 2 || weight.numel() == 0 {
            return Err(Error::invalid(
                OP,
                "weight",
                format!(
                    "must be a non-empty [V/tp, h] matrix, got {:?}",
                    weight.dims()
                ),
            ));
        }
        float(OP, "weight", &weight)?;
        let vs = weight.dims()[0];
        let grad = Tensor::zeros(weight.device(), weight.dims().to_vec(), DType::F32)?;
        Ok(VocabParallelEmbedding {
            vocab: vs * comm.size(),
            start: vs * comm.rank(),
            tp: comm.size(),
            config,
            weight,
            grad,
        })
    }

    /// The configuration.
    pub fn config(&self) -> VocabParallelEmbeddingConfig {
        self.config
    }

    /// The rows of this rank's output (and output gradient) for `n` tokens: `n / tp` under
    /// sequence parallelism, else `n`.
    ///
    /// Errors: [`Error::NotDivisible`] when sequence parallel and `n % tp != 0`.
    pub fn local_tokens(&self, n: usize) -> Result<usize> {
        self.local_rows("VocabParallelEmbedding::local_tokens", n)
    }

    fn local_rows(&self, op: &'static str, n: usize) -> Result<usize> {
        if !self.config.sequence_parallel {
            return Ok(n);
        }
        if n % self.tp != 0 {
            return Err(Error::NotDivisible {
                what: format!(
                    "{op}: tokens (sequence parallelism reduce-scatters the embedding output \
                     along them)"
                ),
                dim: n,
                parts: self.tp,
                why: "tensor-parallel size".into(),
            });
        }
        Ok(n / self.tp)
    }

    fn check_group(&self, op: &'static str, comm: &dyn Communicator) -> Result<()> {
        if comm.size() != self.tp || comm.rank() * (self.vocab / self.tp) != self.start {
            return Err(Error::invalid(
                op,
                "comm",
                format!(
                    "is rank {} of {}, not the embedding's group (rank {} of {})",
                    comm.rank(),
                    comm.size(),
                    self.start / (self.vocab / self.tp),
                    self.tp
                ),
            ));
        }
        Ok(())
    }

    /// `out[i, :] = table[tokens[i], :]`: the local lookup (zero rows for tokens another rank
    /// owns), then the all-reduce over the group, or under sequence parallelism the
    /// reduce-scatter along the tokens, which leaves this rank's chunk
    /// `tokens[r·n/tp .. (r+1)·n/tp]` of the rows. `tokens` is i32 `[n]` (all of them, on every
    /// rank), `out` `[n, h]` (`[n/tp, h]` under sequence parallelism) of the weight's dtype. The
    /// returned [`Work`] completes with the collective.
    ///
    /// Errors (before anything is enqueued): shape and dtype errors, [`Error::NotDivisible`]
    /// when under sequence parallelism `n` does not divide by the group size,
    /// [`Error::InvalidArgument`] when `comm` is not the embedding's group.
    pub fn forward(
        &self,
        stream: &Stream,
        comm: &dyn Communicator,
        tokens: &Tensor,
        out: &mut Tensor,
    ) -> Result<Work> {
        const OP: &str = "VocabParallelEmbedding::forward";
        self.check_group(OP, comm)?;
        let n = check_tokens(OP, tokens)?;
        let (vs, h) = (self.weight.dims()[0], self.weight.dims()[1]);
        let rows = self.local_rows(OP, n)?;
        need(OP, "out", out, &[rows, h], Some(self.weight.dtype()))?;
        let sp = self.config.sequence_parallel;
        // Under sequence parallelism the lookup goes to a full-size scratch tensor that the
        // reduce-scatter then splits (it lives as long as the work that uses it).
        let full = if sp {
            Some(Tensor::poisoned(
                stream.device(),
                [n, h],
                self.weight.dtype(),
            )?)
        } else {
            None
        };
        let (vocab, start) = (self.vocab, self.start);
        let dtype = self.weight.dtype();
        {
            let target: &Tensor = full.as_ref().unwrap_or(&*out);
            let reads = [("weight", &self.weight), ("tokens", tokens)];
            let writes = [("out", target)];
            prepare(stream, OP, &reads, &writes)?;
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                let (r, mut wr) = l.io();
                let t = view::<i32>(r[1]);
                check_targets(OP, t, vocab)?;
                float_dispatch!(dtype, T => {
                    let wt = view::<T>(r[0]);
                    let o = view_mut::<T>(&mut *wr[0]);
                    for (i, &tok) in t.iter().enumerate() {
                        let row = &mut o[i * h..(i + 1) * h];
                        let tok = tok as usize;
                        if (start..start + vs).contains(&tok) {
                            row.copy_from_slice(&wt[(tok - start) * h..(tok - start + 1) * h]);
                        } else {
                            row.fill(T::default());
                        }
                    }
                });
                Ok(())
            });
        }
        match full.as_ref() {
            Some(full) => reduce_scatter_to_sp_region_fwd(stream, comm, full, out),
            None => comm.all_reduce(stream, out, ReduceOp::Sum),
        }
    }

    /// `grad[tokens[i] - start, :] += dout[i, :]` for the tokens this rank owns, in token order
    /// (deterministic). `tokens` is i32 `[n]` (all of them, on every rank). Without sequence
    /// parallelism `dout` is `[n, h]` (the same on every rank, as after the forward's
    /// all-reduce) and there is no communication; under sequence parallelism `dout` is this
    /// rank's `[n/tp, h]` chunk (as the forward's output), all-gathered along the tokens first.
    ///
    /// Errors (before anything is enqueued): shape and dtype errors, [`Error::NotDivisible`]
    /// when under sequence parallelism `n` does not divide by the group size,
    /// [`Error::InvalidArgument`] when `comm` is not the embedding's group.
    pub fn backward(
        &mut self,
        stream: &Stream,
        comm: &dyn Communicator,
        tokens: &Tensor,
        dout: &Tensor,
    ) -> Result<()> {
        const OP: &str = "VocabParallelEmbedding::backward";
        self.check_group(OP, comm)?;
        let n = check_tokens(OP, tokens)?;
        let (vs, h) = (self.weight.dims()[0], self.weight.dims()[1]);
        let rows = self.local_rows(OP, n)?;
        need(OP, "dout", dout, &[rows, h], None)?;
        float(OP, "dout", dout)?;
        let gathered = if self.config.sequence_parallel {
            let mut full = Tensor::poisoned(stream.device(), [n, h], dout.dtype())?;
            reduce_scatter_to_sp_region_bwd(stream, comm, dout, &mut full)?;
            Some(full)
        } else {
            None
        };
        let dout = gathered.as_ref().unwrap_or(dout);
        let (vocab, start) = (self.vocab, self.start);
        let dtype = dout.dtype();
        let reads = [("tokens", tokens), ("dout", dout)];
        let writes = [("grad", &self.grad)];
        prepare(stream, OP, &reads, &writes)?;
        enqueue_host(stream, OP, &reads, &writes, move |l| {
            let (r, mut wr) = l.io();
            let t = view::<i32>(r[0]);
            check_targets(OP, t, vocab)?;
            let g = view_mut::<f32>(&mut *wr[0]);
            float_dispatch!(dtype, T => {
                let d = view::<T>(r[1]);
                for (i, &tok) in t.iter().enumerate() {
                    let tok = tok as usize;
                    if (start..start + vs).contains(&tok) {
                        let gr = &mut g[(tok - start) * h..(tok - start + 1) * h];
                        for (a, &b) in gr.iter_mut().zip(&d[i * h..(i + 1) * h]) {
                            *a += b.to_f32();
                        }
                    }
                }
            });
            Ok(())
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_and_ranges() {
        assert_eq!(padded_vocab_size(50257, 4, 128), 50688);
        assert_eq!(padded_vocab_size(512, 4, 128), 512);
        assert_eq!(vocab_range(512, 1, 4).unwrap(), (128, 256));
        assert!(matches!(
            vocab_range(50257, 0, 4).unwrap_err(),
            Error::NotDivisible {
                dim: 50257,
                parts: 4,
                ..
            }
        ));
    }
}
