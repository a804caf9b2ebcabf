//! Megatron's tensor-parallel MLP: [`ColumnParallelLinear`] (`hidden -> ffn`, `skip_bias_add`)
//! -> fused bias + GeLU ([`crate::ops::bias_gelu_fwd`], the column bias fused in) ->
//! [`RowParallelLinear`] (`ffn -> hidden`, `input_is_parallel`), forward and backward.
//!
//! Each rank holds `ffn/p` of the intermediate features: `linear_fc1`'s rows and
//! `linear_fc2`'s columns. The forward communicates once (all-reduce of the output, or
//! reduce-scatter under sequence parallelism, plus the all-gather of the input under SP); the
//! backward once more for the input gradient (all-reduce or reduce-scatter, overlapped with
//! `linear_fc1`'s weight-gradient GEMM). Conventions (streams, f32 gradients that accumulate,
//! validation before anything is enqueued): see [`super::linear`].

use super::linear::{
    ColumnParallelConfig, ColumnParallelLinear, RowParallelConfig, RowParallelLinear, TpStreams,
};
use crate::comm::Communicator;
use crate::error::{Error, Result};
use crate::ops::bias::column_sum;
use crate::ops::{bias_gelu_bwd, bias_gelu_fwd};
use crate::tensor::Tensor;

/// The options of a [`ParallelMlp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParallelMlpConfig {
    /// `h`: the input and output features.
    pub hidden_size: usize,
    /// `ffn`: the intermediate features (split over the group).
    pub ffn_hidden_size: usize,
    /// Whether both linear layers have a bias (without, the GeLU gets a zero bias).
    pub bias: bool,
    /// The input and output are this rank's chunk of the tokens (`[t/p, h]`).
    pub sequence_parallel: bool,
    /// Do not add `linear_fc2`'s bias: the caller fuses it into the next op (Megatron's
    /// bias-dropout-add) and accumulates its gradient.
    pub skip_bias_add: bool,
}

impl ParallelMlpConfig {
    /// `hidden -> ffn -> hidden` with biases, no sequence parallelism, the output bias added.
    pub fn new(hidden_size: usize, ffn_hidden_size: usize) -> ParallelMlpConfig {
        ParallelMlpConfig {
            hidden_size,
            ffn_hidden_size,
            bias: true,
            sequence_parallel: false,
            skip_bias_add: false,
        }
    }

    /// The options of `linear_fc1`.
    pub fn fc1(&self) -> ColumnParallelConfig {
        ColumnParallelConfig {
            input_size: self.hidden_size,
            output_size: self.ffn_hidden_size,
            bias: self.bias,
            gather_output: false,
            skip_bias_add: true,
            sequence_parallel: self.sequence_parallel,
        }
    }

    /// The options of `linear_fc2`.
    pub fn fc2(&self) -> RowParallelConfig {
        RowParallelConfig {
            input_size: self.ffn_hidden_size,
            output_size: self.hidden_size,
            bias: self.bias,
            input_is_parallel: true,
            skip_bias_add: self.skip_bias_add,
            sequence_parallel: self.sequence_parallel,
        }
    }
}

/// What [`ParallelMlp::forward`] keeps for the backward (Megatron's saved tensors).
#[derive(Debug)]
pub struct MlpActivations {
    /// `linear_fc1`'s output without its bias, `[t, ffn/p]`: the GeLU's input.
    pub pre_gelu: Tensor,
    /// `gelu(pre_gelu + b1)`, `[t, ffn/p]`: `linear_fc2`'s input.
    pub post_gelu: Tensor,
}

/// The tensor-parallel MLP `y = gelu(x W1^T + b1) W2^T + b2` (see the [module docs](self)).
///
/// | | input `x` | output |
/// |-|-----------|--------|
/// | default | `[t, h]` on every rank | `[t, h]` on every rank |
/// | `sequence_parallel` | `[t/p, h]`, this rank's tokens | `[t/p, h]` |
#[derive(Debug)]
pub struct ParallelMlp {
    config: ParallelMlpConfig,
    fc1: ColumnParallelLinear,
    fc2: RowParallelLinear,
    /// The GeLU's bias when the layers have none.
    zero_bias: Option<Tensor>,
}

impl ParallelMlp {
    /// An MLP over two layers built for `config` ([`ParallelMlpConfig::fc1`] and
    /// [`ParallelMlpConfig::fc2`]) with the same dtype and group.
    ///
    /// Errors: [`Error::InvalidArgument`] when a layer's options or group do not match the
    /// config, [`Error::DTypeMismatch`] when the layers' dtypes differ.
    pub fn new(
        config: ParallelMlpConfig,
        fc1: ColumnParallelLinear,
        fc2: RowParallelLinear,
    ) -> Result<ParallelMlp> {
        const OP: &str = "ParallelMlp::new";
        if *fc1.config() != config.fc1() {
            return Err(Error::invalid(
                OP,
                "linear_fc1",
                format!(
                    "options {:?}, the config needs {:?}",
                    fc1.config(),
                    config.fc1()
                ),
            ));
        }
        if *fc2.config() != config.fc2() {
            return Err(Error::invalid(
                OP,
                "linear_fc2",
                format!(
                    "options {:?}, the config needs {:?}",
                    fc2.config(),
                    config.fc2()
                ),
            ));
        }
        if (fc1.tp_rank(), fc1.tp_size()) != (fc2.tp_rank(), fc2.tp_size()) {
            return Err(Error::invalid(
                OP,
                "linear_fc2",
                "built for another tensor-parallel group than linear_fc1",
            ));
        }
        if fc1.dtype() != fc2.dtype() {
            return Err(Error::DTypeMismatch {
                op: OP,
                what: "linear_fc2 parameters".into(),
                expected: fc1.dtype(),
                got: fc2.dtype(),
            });
        }
        let zero_bias = match config.bias {
            true => None,
            false => {
                let n = config.ffn_hidden_size / fc1.tp_size();
                Some(Tensor::zeros(fc1.weight().device(), [n], fc1.dtype())?)
            }
        };
        Ok(ParallelMlp {
            config,
            fc1,
            fc2,
            zero_bias,
        })
    }

    /// An MLP whose shards are cut from the full weights (the same on every rank):
    /// `w1` `[ffn, h]`, `b1` `[ffn]`, `w2` `[h, ffn]`, `b2` `[h]` (biases iff `config.bias`).
    /// The copies are enqueued on `streams.compute`.
    ///
    /// Errors: as [`ColumnParallelLinear::from_full`] and [`RowParallelLinear::from_full`]
    /// ([`Error::NotDivisible`] when `ffn` does not divide by the group size).
    pub fn from_full(
        streams: &TpStreams,
        comm: &dyn Communicator,
        config: ParallelMlpConfig,
        (w1, b1): (&Tensor, Option<&Tensor>),
        (w2, b2): (&Tensor, Option<&Tensor>),
    ) -> Result<ParallelMlp> {
        let fc1 = ColumnParallelLinear::from_full(streams, comm, config.fc1(), w1, b1)?;
        let fc2 = RowParallelLinear::from_full(streams, comm, config.fc2(), w2, b2)?;
        ParallelMlp::new(config, fc1, fc2)
    }

    /// The options.
    pub fn config(&self) -> &ParallelMlpConfig {
        &self.config
    }

    /// The first layer (`hidden -> ffn`, column-parallel).
    pub fn linear_fc1(&self) -> &ColumnParallelLinear {
        &self.fc1
    }

    /// The second layer (`ffn -> hidden`, row-parallel).
    pub fn linear_fc2(&self) -> &RowParallelLinear {
        &self.fc2
    }

    /// The first layer, mutable (its gradients).
    pub fn linear_fc1_mut(&mut self) -> &mut ColumnParallelLinear {
        &mut self.fc1
    }

    /// Every `(parameter, gradient)` pair (FC1, then FC2), for an optimizer.
    pub fn params_mut(&mut self) -> Vec<(&mut Tensor, &Tensor)> {
        let mut v = self.fc1.params_mut();
        v.extend(self.fc2.params_mut());
        v
    }

    /// The second layer, mutable (its gradients).
    pub fn linear_fc2_mut(&mut self) -> &mut RowParallelLinear {
        &mut self.fc2
    }

    /// Resets every gradient to zero, in place, on `streams.compute`.
    pub fn zero_grad(&mut self, streams: &TpStreams) -> Result<()> {
        self.fc1.zero_grad(streams)?;
        self.fc2.zero_grad(streams)
    }

    fn gelu_bias(&self) -> &Tensor {
        match (&self.zero_bias, self.fc1.bias()) {
            (Some(z), _) => z,
            (None, Some(b)) => b,
            (None, None) => unreachable!("bias or zero bias, by construction"),
        }
    }

    /// Validates `x` (and, when given, the saved activations and `dy`) before a call enqueues
    /// anything: the inner layers' checks then cannot fail half-way.
    fn check_call(
        &self,
        op: &'static str,
        streams: &TpStreams,
        comm: &dyn Communicator,
        x: &Tensor,
        bwd: Option<(&MlpActivations, &Tensor)>,
    ) -> Result<()> {
        // The first layer's checks: group, streams, device, dtype and shape of x.
        let probe = self.fc1.check_call(op, streams, comm, x)?;
        let Some((acts, dy)) = bwd else {
            return Ok(());
        };
        let (t_local, t) = probe;
        let p = self.fc1.tp_size();
        let want = [t, self.config.ffn_hidden_size / p];
        for (what, a) in [("pre_gelu", &acts.pre_gelu), ("post_gelu", &acts.post_gelu)] {
            super::linear::check_activation(op, what, a, streams, self.fc1.dtype(), &want)?;
        }
        super::linear::check_activation(
            op,
            "dy",
            dy,
            streams,
            self.fc1.dtype(),
            &[t_local, self.config.hidden_size],
        )
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
    ) -> Result<(Tensor, MlpActivations)> {
        const OP: &str = "ParallelMlp::forward";
        self.check_call(OP, streams, comm, x, None)?;
        let pre_gelu = self.fc1.forward(streams, comm, x)?;
        let mut post_gelu = Tensor::poisoned(streams.device(), pre_gelu.dims(), pre_gelu.dtype())?;
        bias_gelu_fwd(
            &streams.compute,
            &pre_gelu,
            self.gelu_bias(),
            &mut post_gelu,
        )?;
        let y = self.fc2.forward(streams, comm, &post_gelu)?;
        Ok((
            y,
            MlpActivations {
                pre_gelu,
                post_gelu,
            },
        ))
    }

    /// Backward: given the forward's input `x`, its activations and the output gradient `dy`
    /// (shaped like the output), returns `dx` (shaped like `x`) and accumulates every
    /// parameter gradient: `linear_fc2`'s weight and (unless `skip_bias_add`) bias,
    /// `linear_fc1`'s weight and bias (the column sums of the GeLU's input gradient).
    ///
    /// Errors: as [`ParallelMlp::forward`], for `x`, the activations (`[t, ffn/p]`) and `dy`.
    pub fn backward(
        &mut self,
        streams: &TpStreams,
        comm: &dyn Communicator,
        x: &Tensor,
        acts: &MlpActivations,
        dy: &Tensor,
    ) -> Result<Tensor> {
        const OP: &str = "ParallelMlp::backward";
        self.check_call(OP, streams, comm, x, Some((acts, dy)))?;
        let d_post = self.fc2.backward(streams, comm, &acts.post_gelu, dy)?;
        let c = &streams.compute;
        let mut d_pre = Tensor::poisoned(streams.device(), d_post.dims(), d_post.dtype())?;
        bias_gelu_bwd(
            c,
            &d_post,
            &acts.pre_gelu,
            self.gelu_bias(),
            &mut d_pre,
            None,
        )?;
        if let Some(gb) = self.fc1.grad_bias_mut() {
            column_sum(c, &d_pre, gb, true)?;
        }
        self.fc1.backward(streams, comm, x, &d_pre)
    }
}
