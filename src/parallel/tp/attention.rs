//! Megatron's tensor-parallel self-attention (causal, one sequence, batch 1):
//! [`ColumnParallelLinear`] (`hidden -> 3*hidden`, the fused QKV projection) -> per local head
//! `softmax(q k^T / sqrt(d), causal) v` -> [`RowParallelLinear`] (`hidden -> hidden`,
//! `input_is_parallel`), forward and backward.
//!
//! **Heads are split over the group**: with `n` heads of size `d = hidden / n` and `p` ranks,
//! rank `r` owns heads `r*n/p .. (r+1)*n/p` (`n % p != 0` is [`Error::NotDivisible`]).
//!
//! **QKV layout** (Megatron's per-head interleaving): the full QKV weight is `[3*hidden,
//! hidden]` and its bias `[3*hidden]`, with rows grouped by head, `[h0: q k v, h1: q k v, ...]`:
//! rows `3*d*h .. 3*d*h + d` are head `h`'s query, the next `d` its key, the next `d` its value.
//! Because every head's `q k v` rows are contiguous, the column-parallel split of the rows
//! ([`Partition::First`](super::Partition::First), what [`ColumnParallelLinear::from_full`]
//! and [`super::cut_shard`] do) gives every rank exactly its heads' `q`, `k` and `v`: the
//! rank's QKV output `[s, 3*hidden/p]` is, per local head `i`, columns `3*d*i ..` = `[q | k |
//! v]`. The output projection `[hidden, hidden]` is split along its columns (heads' context
//! features), as any [`RowParallelLinear`]. [`qkv_full_from_separate`] builds the interleaved
//! weight from separate `Wq`, `Wk`, `Wv` (`[hidden, hidden]` each, head-major rows).
//!
//! Conventions (streams, f32 gradients that accumulate, validation before anything is
//! enqueued, bf16 rounding of every stored activation): see [`super::linear`]. The attention
//! core stores, per head, the scores and probabilities `[s, s]` and the context `[s, d]` in the
//! activation dtype; the scale `1/sqrt(d)` is applied as the score GEMM's `alpha`.
//!
//! **Sequence parallelism** is supported through the linear layers: with
//! `sequence_parallel` the input is this rank's chunk of the tokens `[s/p, hidden]`, the QKV
//! layer all-gathers it (so the attention core sees the whole sequence), and the output
//! projection reduce-scatters back to `[s/p, hidden]`.

use super::linear::{
    ColumnParallelConfig, ColumnParallelLinear, RowParallelConfig, RowParallelLinear, TpStreams,
};
use crate::comm::Communicator;
use crate::error::{Error, Result};
use crate::ops::shard::{concat_last, split_last};
use crate::ops::{gemm, softmax_bwd, softmax_fwd, Gemm, Transpose};
use crate::tensor::Tensor;

/// The options of a [`ParallelAttention`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParallelAttentionConfig {
    /// `hidden`: the input and output features.
    pub hidden_size: usize,
    /// `n`: the attention heads (split over the group; `hidden` must divide by it).
    pub num_heads: usize,
    /// Whether both linear layers have a bias.
    pub bias: bool,
    /// The input and output are this rank's chunk of the tokens (`[s/p, hidden]`).
    pub sequence_parallel: bool,
}

impl ParallelAttentionConfig {
    /// `hidden` features in `num_heads` heads, with biases, no sequence parallelism.
    pub fn new(hidden_size: usize, num_heads: usize) -> ParallelAttentionConfig {
        ParallelAttentionConfig {
            hidden_size,
            num_heads,
            bias: true,
            sequence_parallel: false,
        }
    }

    /// The head size `d = hidden / num_heads` (0 when `num_heads` is 0).
    pub fn head_dim(&self) -> usize {
        self.hidden_size.checked_div(self.num_heads).unwrap_or(0)
    }

    /// The options of the QKV projection (`hidden -> 3*hidden`, column-parallel).
    pub fn qkv(&self) -> ColumnParallelConfig {
        ColumnParallelConfig {
            input_size: self.hidden_size,
            output_size: 3 * self.hidden_size,
            bias: self.bias,
            gather_output: false,
            skip_bias_add: false,
            sequence_parallel: self.sequence_parallel,
        }
    }

    /// The options of the output projection (`hidden -> hidden`, row-parallel).
    pub fn proj(&self) -> RowParallelConfig {
        RowParallelConfig {
            input_size: self.hidden_size,
            output_size: self.hidden_size,
            bias: self.bias,
            input_is_parallel: true,
            skip_bias_add: false,
            sequence_parallel: self.sequence_parallel,
        }
    }

    /// Validates the head split for a group of `p` ranks; returns the local heads `n / p`.
    ///
    /// Errors: [`Error::InvalidArgument`] when there are no heads or `p == 0`,
    /// [`Error::NotDivisible`] when `hidden % n != 0` or `n % p != 0`.
    pub fn check(&self, p: usize) -> Result<usize> {
        const OP: &str = "ParallelAttentionConfig::check";
        if self.num_heads == 0 {
            return Err(Error::invalid(OP, "num_heads", "must be at least 1"));
        }
        if p == 0 {
            return Err(Error::invalid(
                OP,
                "tensor-parallel size",
                "must be at least 1",
            ));
        }
        if self.hidden_size == 0 || self.hidden_size % self.num_heads != 0 {
            return Err(Error::NotDivisible {
                what: format!("{OP}: hidden_size"),
                dim: self.hidden_size,
                parts: self.num_heads,
                why: "number of attention heads".into(),
            });
        }
        if self.num_heads % p != 0 {
            return Err(Error::NotDivisible {
                what: format!("{OP}: num_heads (heads are split over the group)"),
                dim: self.num_heads,
                parts: p,
                why: "tensor-parallel size".into(),
            });
        }
        Ok(self.num_heads / p)
    }
}

/// The interleaved full QKV weight `[3*hidden, hidden]` (see the [module docs](self)) from
/// separate query, key and value weights (`[hidden, hidden]` each, rows `d*h .. d*(h+1)` being
/// head `h`), as host values (row-major). Also works for biases (`in_features = 1`).
///
/// # Panics
/// If the slices are not `hidden * in_features` long or `hidden % num_heads != 0`.
pub fn qkv_full_from_separate(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    num_heads: usize,
    in_features: usize,
) -> Vec<f64> {
    assert!(q.len() == k.len() && k.len() == v.len());
    let hidden = q.len() / in_features;
    assert_eq!(hidden * in_features, q.len());
    assert!(num_heads > 0 && hidden % num_heads == 0);
    let block = hidden / num_heads * in_features;
    let mut out = Vec::with_capacity(3 * q.len());
    for h in 0..num_heads {
        for w in [q, k, v] {
            out.extend_from_slice(&w[h * block..(h + 1) * block]);
        }
    }
    out
}

/// What [`ParallelAttention::forward`] keeps for the backward.
#[derive(Debug)]
pub struct AttentionActivations {
    /// The QKV projection's output (with bias), `[s, 3*hidden/p]`, per local head `[q | k | v]`.
    pub qkv: Tensor,
    /// Per local head, the causal softmax probabilities `[s, s]`.
    pub probs: Vec<Tensor>,
    /// The heads' contexts concatenated, `[s, hidden/p]`: the output projection's input.
    pub context: Tensor,
}

/// The tensor-parallel causal self-attention (see the [module docs](self)).
///
/// | | input `x` | output |
/// |-|-----------|--------|
/// | default | `[s, hidden]` on every rank | `[s, hidden]` on every rank |
/// | `sequence_parallel` | `[s/p, hidden]`, this rank's tokens | `[s/p, hidden]` |
#[derive(Debug)]
pub struct ParallelAttention {
    config: ParallelAttentionConfig,
    qkv: ColumnParallelLinear,
    proj: RowParallelLinear,
    local_heads: usize,
}

impl ParallelAttention {
    /// An attention over two layers built for `config` ([`ParallelAttentionConfig::qkv`] and
    /// [`ParallelAttentionConfig::proj`]) with the same dtype and group; the QKV layer's rows
    /// must be in the interleaved layout of the [module docs](self).
    ///
    /// Errors: [`Error::NotDivisible`] (see [`ParallelAttentionConfig::check`]),
    /// [`Error::InvalidArgument`] when a layer's options or group do not match the config,
    /// [`Error::DTypeMismatch`] when the layers' dtypes differ.
    pub fn new(
        config: ParallelAttentionConfig,
        qkv: ColumnParallelLinear,
        proj: RowParallelLinear,
    ) -> Result<ParallelAttention> {
        const OP: &str = "ParallelAttention::new";
        let local_heads = config.check(qkv.tp_size())?;
        if *qkv.config() != config.qkv() {
            return Err(Error::invalid(
                OP,
                "linear_qkv",
                format!(
                    "options {:?}, the config needs {:?}",
                    qkv.config(),
                    config.qkv()
                ),
            ));
        }
        if *proj.config() != config.proj() {
            return Err(Error::invalid(
                OP,
                "linear_proj",
                format!(
                    "options {:?}, the config needs {:?}",
                    proj.config(),
                    config.proj()
                ),
            ));
        }
        if (qkv.tp_rank(), qkv.tp_size()) != (proj.tp_rank(), proj.tp_size()) {
            return Err(Error::invalid(
                OP,
                "linear_proj",
                "built for another tensor-parallel group than linear_qkv",
            ));
        }
        if qkv.dtype() != proj.dtype() {
            return Err(Error::DTypeMismatch {
                op: OP,
                what: "linear_proj parameters".into(),
                expected: qkv.dtype(),
                got: proj.dtype(),
            });
        }
        Ok(ParallelAttention {
            config,
            qkv,
            proj,
            local_heads,
        })
    }

    /// An attention whose shards are cut from the full weights (the same on every rank):
    /// `w_qkv` `[3*hidden, hidden]` and `b_qkv` `[3*hidden]` in the interleaved layout of the
    /// [module docs](self), `w_o` `[hidden, hidden]`, `b_o` `[hidden]` (biases iff
    /// `config.bias`). The copies are enqueued on `streams.compute`.
    ///
    /// Errors: [`Error::NotDivisible`] when the heads do not divide by the group size (checked
    /// first, before anything is enqueued), else as [`ColumnParallelLinear::from_full`] and
    /// [`RowParallelLinear::from_full`].
    pub fn from_full(
        streams: &TpStreams,
        comm: &dyn Communicator,
        config: ParallelAttentionConfig,
        (w_qkv, b_qkv): (&Tensor, Option<&Tensor>),
        (w_o, b_o): (&Tensor, Option<&Tensor>),
    ) -> Result<ParallelAttention> {
        config.check(comm.size())?;
        let qkv = ColumnParallelLinear::from_full(streams, comm, config.qkv(), w_qkv, b_qkv)?;
        let proj = RowParallelLinear::from_full(streams, comm, config.proj(), w_o, b_o)?;
        ParallelAttention::new(config, qkv, proj)
    }

    /// The options.
    pub fn config(&self) -> &ParallelAttentionConfig {
        &self.config
    }

    /// The heads this rank computes (`num_heads / p`).
    pub fn local_heads(&self) -> usize {
        self.local_heads
    }

    /// The QKV projection (`hidden -> 3*hidden`, column-parallel).
    pub fn linear_qkv(&self) -> &ColumnParallelLinear {
        &self.qkv
    }

    /// The output projection (`hidden -> hidden`, row-parallel).
    pub fn linear_proj(&self) -> &RowParallelLinear {
        &self.proj
    }

    /// The QKV projection, mutable (its gradients).
    pub fn linear_qkv_mut(&mut self) -> &mut ColumnParallelLinear {
        &mut self.qkv
    }

    /// Every `(parameter, gradient)` pair (QKV, then the output projection), for an optimizer.
    pub fn params_mut(&mut self) -> Vec<(&mut Tensor, &Tensor)> {
        let mut v = self.qkv.params_mut();
        v.extend(self.proj.params_mut());
        v
    }

    /// The output projection, mutable (its gradients).
    pub fn linear_proj_mut(&mut self) -> &mut RowParallelLinear {
        &mut self.proj
    }

    /// Resets every gradient to zero, in place, on `streams.compute`.
    pub fn zero_grad(&mut self, streams: &TpStreams) -> Result<()> {
        self.qkv.zero_grad(streams)?;
        self.proj.zero_grad(streams)
    }

    fn scale(&self) -> f32 {
        1.0 / (self.config.head_dim() as f32).sqrt()
    }

    /// Validates `x` (and, when given, the saved activations and `dy`) before a call enqueues
    /// anything; returns the tokens of the attention core (`s`).
    fn check_call(
        &self,
        op: &'static str,
        streams: &TpStreams,
        comm: &dyn Communicator,
        x: &Tensor,
        bwd: Option<(&AttentionActivations, &Tensor)>,
    ) -> Result<usize> {
        let (t_local, t) = self.qkv.check_call(op, streams, comm, x)?;
        let Some((acts, dy)) = bwd else {
            return Ok(t);
        };
        let (p, dtype) = (self.qkv.tp_size(), self.qkv.dtype());
        let h = self.config.hidden_size;
        use super::linear::check_activation as check;
        check(op, "qkv", &acts.qkv, streams, dtype, &[t, 3 * h / p])?;
        check(op, "context", &acts.context, streams, dtype, &[t, h / p])?;
        if acts.probs.len() != self.local_heads {
            return Err(Error::invalid(
                op,
                "probs",
                format!(
                    "{} tensors, one per local head needs {}",
                    acts.probs.len(),
                    self.local_heads
                ),
            ));
        }
        for pr in &acts.probs {
            check(op, "probs", pr, streams, dtype, &[t, t])?;
        }
        check(op, "dy", dy, streams, dtype, &[t_local, h])?;
        Ok(t)
    }

    /// Local head `i`'s `(q, k, v)`, each `[s, d]`, copied out of `qkv` on `streams.compute`.
    fn head_qkv(&self, streams: &TpStreams, qkv: &Tensor, i: usize) -> Result<[Tensor; 3]> {
        let (c, s, d) = (&streams.compute, qkv.dims()[0], self.config.head_dim());
        let dtype = qkv.dtype();
        let mut head = Tensor::poisoned(streams.device(), [s, 3 * d], dtype)?;
        split_last(c, qkv, i, self.local_heads, &mut head)?;
        let mut out = Vec::with_capacity(3);
        for j in 0..3 {
            let mut t = Tensor::poisoned(streams.device(), [s, d], dtype)?;
            split_last(c, &head, j, 3, &mut t)?;
            out.push(t);
        }
        let [q, k, v]: [Tensor; 3] = out.try_into().expect("three parts");
        Ok([q, k, v])
    }

    /// Forward: returns the output (see the table in the type's docs) and the activations the
    /// backward needs, all ready on `streams.compute`.
    ///
    /// Errors (before anything is enqueued): shape, dtype and device errors for `x`,
    /// [`Error::InvalidArgument`] when `comm` is not the layers' group.
    pub fn forward(
        &self,
        streams: &TpStreams,
        comm: &dyn Communicator,
        x: &Tensor,
    ) -> Result<(Tensor, AttentionActivations)> {
        const OP: &str = "ParallelAttention::forward";
        let s = self.check_call(OP, streams, comm, x, None)?;
        let qkv = self.qkv.forward(streams, comm, x)?;
        let (c, dev, dtype) = (&streams.compute, streams.device(), qkv.dtype());
        let d = self.config.head_dim();
        let mut probs = Vec::with_capacity(self.local_heads);
        let mut ctxs = Vec::with_capacity(self.local_heads);
        for i in 0..self.local_heads {
            let [q, k, v] = self.head_qkv(streams, &qkv, i)?;
            let mut scores = Tensor::poisoned(dev, [s, s], dtype)?;
            let qk = Gemm {
                tb: Transpose::T,
                alpha: self.scale(),
                ..Gemm::default()
            };
            gemm(c, &q, &k, &mut scores, &qk)?;
            let mut pr = Tensor::poisoned(dev, [s, s], dtype)?;
            softmax_fwd(c, &scores, &mut pr, 1.0, true)?;
            let mut ctx = Tensor::poisoned(dev, [s, d], dtype)?;
            gemm(c, &pr, &v, &mut ctx, &Gemm::default())?;
            probs.push(pr);
            ctxs.push(ctx);
        }
        let mut context = Tensor::poisoned(
            dev,
            [s, self.config.hidden_size / self.qkv.tp_size()],
            dtype,
        )?;
        let parts: Vec<&Tensor> = ctxs.iter().collect();
        concat_last(c, &parts, &mut context)?;
        let y = self.proj.forward(streams, comm, &context)?;
        Ok((
            y,
            AttentionActivations {
                qkv,
                probs,
                context,
            },
        ))
    }

    /// Backward: given the forward's input `x`, its activations and the output gradient `dy`
    /// (shaped like the output), returns `dx` (shaped like `x`) and accumulates every
    /// parameter gradient (both layers' weights and, with `bias`, biases).
    ///
    /// Errors: as [`ParallelAttention::forward`], for `x`, the activations and `dy`.
    pub fn backward(
        &mut self,
        streams: &TpStreams,
        comm: &dyn Communicator,
        x: &Tensor,
        acts: &AttentionActivations,
        dy: &Tensor,
    ) -> Result<Tensor> {
        const OP: &str = "ParallelAttention::backward";
        let s = self.check_call(OP, streams, comm, x, Some((acts, dy)))?;
        let dctx = self.proj.backward(streams, comm, &acts.context, dy)?;
        let (c, dev, dtype) = (&streams.compute, streams.device(), dy.dtype());
        let (d, nl, scale) = (self.config.head_dim(), self.local_heads, self.scale());
        let mut dheads = Vec::with_capacity(nl);
        for (i, pr) in acts.probs.iter().enumerate() {
            let [q, k, v] = self.head_qkv(streams, &acts.qkv, i)?;
            let mut dctx_h = Tensor::poisoned(dev, [s, d], dtype)?;
            split_last(c, &dctx, i, nl, &mut dctx_h)?;
            // dP = dctx v^T, dv = P^T dctx.
            let mut dp = Tensor::poisoned(dev, [s, s], dtype)?;
            let nt = Gemm {
                tb: Transpose::T,
                ..Gemm::default()
            };
            gemm(c, &dctx_h, &v, &mut dp, &nt)?;
            let mut dv = Tensor::poisoned(dev, [s, d], dtype)?;
            let tn = Gemm {
                ta: Transpose::T,
                ..Gemm::default()
            };
            gemm(c, pr, &dctx_h, &mut dv, &tn)?;
            // dS = softmax'(dP); dq = scale dS k, dk = scale dS^T q.
            let mut ds = Tensor::poisoned(dev, [s, s], dtype)?;
            softmax_bwd(c, &dp, pr, &mut ds, 1.0)?;
            let mut dq = Tensor::poisoned(dev, [s, d], dtype)?;
            let nn_scaled = Gemm {
                alpha: scale,
                ..Gemm::default()
            };
            gemm(c, &ds, &k, &mut dq, &nn_scaled)?;
            let mut dk = Tensor::poisoned(dev, [s, d], dtype)?;
            let tn_scaled = Gemm { alpha: scale, ..tn };
            gemm(c, &ds, &q, &mut dk, &tn_scaled)?;
            let mut dh = Tensor::poisoned(dev, [s, 3 * d], dtype)?;
            concat_last(c, &[&dq, &dk, &dv], &mut dh)?;
            dheads.push(dh);
        }
        let mut dqkv = Tensor::poisoned(dev, acts.qkv.dims(), dtype)?;
        let parts: Vec<&Tensor> = dheads.iter().collect();
        concat_last(c, &parts, &mut dqkv)?;
        self.qkv.backward(streams, comm, x, &dqkv)
    }
}
