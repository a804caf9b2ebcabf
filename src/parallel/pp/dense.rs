//! A concrete pipeline stage and loss for tests, benchmarks and the `ferrotron pipeline` job: a
//! stack of dense layers `y = gelu(x W^T + b)` with a truly split backward (input gradient and
//! weight gradient apart, as the zero-bubble schedules need), and a mean cross-entropy loss.

use super::stage::{downcast, PipelineLoss, PipelineStage, Saved};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{
    bias::column_sum, bias_gelu_bwd, bias_gelu_fwd, cross_entropy_bwd, cross_entropy_fwd, gemm,
    Gemm, Transpose,
};
use crate::stream::Stream;
use crate::tensor::Tensor;

/// The full-precision values of one dense layer `y = gelu(x W^T + b)`: `weight` is
/// `[outputs, inputs]` row-major, `bias` is `[outputs]`.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseLayerInit {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// `[outputs, inputs]`, row-major.
    pub weight: Vec<f64>,
    /// `[outputs]`.
    pub bias: Vec<f64>,
}

struct DenseLayer {
    w: Tensor,
    b: Tensor,
    dw: Tensor,
    db: Tensor,
}

/// `dW += dh^T x`, accumulated into the f32 main gradient.
const WGRAD: Gemm = Gemm {
    ta: Transpose::T,
    tb: Transpose::N,
    alpha: 1.0,
    beta: 1.0,
};

impl DenseLayer {
    /// Input half of this layer's backward: `dh = dy * gelu'(pre + b)` and `dx = dh W`.
    fn input_grad(&self, stream: &Stream, pre: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let dev = stream.device();
        let mut dh = Tensor::poisoned(dev, pre.dims(), pre.dtype())?;
        bias_gelu_bwd(stream, dy, pre, &self.b, &mut dh, None)?;
        let mut dx = Tensor::poisoned(dev, [pre.dims()[0], self.w.dims()[1]], pre.dtype())?;
        gemm(stream, &dh, &self.w, &mut dx, &Gemm::default())?;
        Ok((dh, dx))
    }

    /// Weight half: `dW += dh^T x`, `db += column sums of dh`.
    fn weight_grad(&mut self, stream: &Stream, dh: &Tensor, x: &Tensor) -> Result<()> {
        gemm(stream, dh, x, &mut self.dw, &WGRAD)?;
        column_sum(stream, dh, &mut self.db, true)
    }
}

/// A stack of dense GeLU layers: one pipeline chunk. Parameters in the stage's dtype; gradients
/// accumulated in f32 (Megatron's `main_grad`) across micro-batches.
pub struct DenseGeluStage {
    layers: Vec<DenseLayer>,
    dtype: DType,
    device: Device,
}

struct ForwardSaved {
    /// Pre-activations `x W^T` of every layer.
    pre: Vec<Tensor>,
    /// Outputs of layers `0..L-1` (inputs of layers `1..L`).
    hidden: Vec<Tensor>,
}

struct WeightSaved {
    /// Gradients of every layer's pre-activation.
    dpre: Vec<Tensor>,
    hidden: Vec<Tensor>,
}

impl DenseGeluStage {
    /// Builds the stage from full-precision values (rounded to `dtype`), zero gradients.
    ///
    /// Errors: [`Error::InvalidArgument`] for no layers, a zero width, consecutive widths that
    /// do not chain, or value counts that do not match the widths; dtype errors for a non-float
    /// dtype.
    pub fn new(device: &Device, layers: &[DenseLayerInit], dtype: DType) -> Result<Self> {
        const OP: &str = "DenseGeluStage::new";
        if layers.is_empty() {
            return Err(Error::invalid(
                OP,
                "layers",
                "a stage needs at least one layer",
            ));
        }
        if !dtype.is_float() {
            return Err(Error::UnsupportedDType {
                op: OP,
                what: "dtype".into(),
                dtype,
            });
        }
        let mut out = Vec::with_capacity(layers.len());
        for (l, init) in layers.iter().enumerate() {
            if init.inputs == 0 || init.outputs == 0 {
                return Err(Error::invalid(OP, format!("layer {l}"), "a width is zero"));
            }
            if l > 0 && layers[l - 1].outputs != init.inputs {
                return Err(Error::invalid(
                    OP,
                    format!("layer {l}"),
                    format!(
                        "takes {} inputs but layer {} gives {}",
                        init.inputs,
                        l - 1,
                        layers[l - 1].outputs
                    ),
                ));
            }
            let (o, i) = (init.outputs, init.inputs);
            out.push(DenseLayer {
                w: Tensor::from_f64(device, &init.weight, [o, i], dtype)?,
                b: Tensor::from_f64(device, &init.bias, [o], dtype)?,
                dw: Tensor::zeros(device, [o, i], DType::F32)?,
                db: Tensor::zeros(device, [o], DType::F32)?,
            });
        }
        Ok(DenseGeluStage {
            layers: out,
            dtype,
            device: device.clone(),
        })
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Input width of the first layer.
    pub fn inputs(&self) -> usize {
        self.layers[0].w.dims()[1]
    }

    /// Output width of the last layer.
    pub fn outputs(&self) -> usize {
        self.layers[self.layers.len() - 1].w.dims()[0]
    }

    /// The parameters' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Layer `l`'s `[weight, bias, weight grad (f32), bias grad (f32)]`.
    ///
    /// Errors: [`Error::IndexOutOfRange`]-like [`Error::InvalidArgument`] for `l` past the end.
    pub fn tensors(&self, l: usize) -> Result<[&Tensor; 4]> {
        let layer = self.layers.get(l).ok_or_else(|| {
            Error::invalid(
                "DenseGeluStage::tensors",
                "l",
                format!("layer {l} of a {}-layer stage", self.layers.len()),
            )
        })?;
        Ok([&layer.w, &layer.b, &layer.dw, &layer.db])
    }

    /// Every layer's `(weight, bias)`, mutable (e.g. for an optimizer that writes them), in layer
    /// order.
    pub fn weights_mut(&mut self) -> Vec<(&mut Tensor, &mut Tensor)> {
        self.layers
            .iter_mut()
            .map(|l| (&mut l.w, &mut l.b))
            .collect()
    }

    /// Every layer's `(weight grad, bias grad)`, mutable (e.g. to receive averaged gradients),
    /// in layer order.
    pub fn grads_mut(&mut self) -> Vec<(&mut Tensor, &mut Tensor)> {
        self.layers
            .iter_mut()
            .map(|l| (&mut l.dw, &mut l.db))
            .collect()
    }

    /// Layer `l`'s parameters for an optimizer update: `(weight, bias, weight grad, bias grad)`.
    ///
    /// Errors: [`Error::InvalidArgument`] for `l` past the end.
    pub fn params_mut(&mut self, l: usize) -> Result<(&mut Tensor, &mut Tensor, &Tensor, &Tensor)> {
        let n = self.layers.len();
        let layer = self.layers.get_mut(l).ok_or_else(|| {
            Error::invalid(
                "DenseGeluStage::params_mut",
                "l",
                format!("layer {l} of a {n}-layer stage"),
            )
        })?;
        Ok((&mut layer.w, &mut layer.b, &layer.dw, &layer.db))
    }

    /// The full backward, layer by layer from the last: after each layer's weight and bias
    /// gradients are accumulated, `on_layer(l, dw, db)` runs (e.g. to hand the final gradients
    /// of the step to a data-parallel reducer while the earlier layers' backward goes on).
    /// Returns the input gradient.
    ///
    /// Errors: as [`PipelineStage::backward`], and whatever `on_layer` returns.
    pub fn backward_with_hook(
        &mut self,
        stream: &Stream,
        input: &Tensor,
        saved: Saved,
        grad_output: &Tensor,
        on_layer: &mut dyn FnMut(usize, &Tensor, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let s = downcast::<ForwardSaved>("DenseGeluStage::backward_with_hook", saved)?;
        let mut dy: Option<Tensor> = None;
        for l in (0..self.layers.len()).rev() {
            let layer = &mut self.layers[l];
            let (dh, dx) =
                layer.input_grad(stream, &s.pre[l], dy.as_ref().unwrap_or(grad_output))?;
            layer.weight_grad(stream, &dh, if l == 0 { input } else { &s.hidden[l - 1] })?;
            on_layer(l, &layer.dw, &layer.db)?;
            dy = Some(dx);
        }
        Ok(dy.expect("at least one layer"))
    }

    /// Resets every gradient to zero (fresh buffers: work still reading the old ones keeps them
    /// alive).
    pub fn zero_grad(&mut self) -> Result<()> {
        for l in &mut self.layers {
            l.dw = Tensor::zeros(&self.device, l.dw.dims(), DType::F32)?;
            l.db = Tensor::zeros(&self.device, l.db.dims(), DType::F32)?;
        }
        Ok(())
    }
}

impl PipelineStage for DenseGeluStage {
    fn forward(&mut self, stream: &Stream, input: &Tensor) -> Result<(Tensor, Saved)> {
        let rows = input.dims().first().copied().unwrap_or(0);
        let (n, dev) = (self.layers.len(), &self.device);
        let mut pre = Vec::with_capacity(n);
        let mut hidden: Vec<Tensor> = Vec::with_capacity(n);
        for (l, layer) in self.layers.iter().enumerate() {
            let x = if l == 0 { input } else { &hidden[l - 1] };
            let o = layer.w.dims()[0];
            let mut h = Tensor::poisoned(dev, [rows, o], self.dtype)?;
            let args = Gemm {
                tb: Transpose::T,
                ..Gemm::default()
            };
            gemm(stream, x, &layer.w, &mut h, &args)?;
            let mut y = Tensor::poisoned(dev, [rows, o], self.dtype)?;
            bias_gelu_fwd(stream, &h, &layer.b, &mut y)?;
            pre.push(h);
            hidden.push(y);
        }
        let out = hidden.pop().expect("at least one layer");
        Ok((out, Box::new(ForwardSaved { pre, hidden })))
    }

    fn backward_input(
        &mut self,
        stream: &Stream,
        _input: &Tensor,
        saved: Saved,
        grad_output: &Tensor,
    ) -> Result<(Tensor, Saved)> {
        let s = downcast::<ForwardSaved>("DenseGeluStage::backward_input", saved)?;
        let n = self.layers.len();
        let mut dpre: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
        let mut dy: Option<Tensor> = None;
        for l in (0..n).rev() {
            let g = dy.as_ref().unwrap_or(grad_output);
            let (dh, dx) = self.layers[l].input_grad(stream, &s.pre[l], g)?;
            dpre[l] = Some(dh);
            dy = Some(dx);
        }
        let dpre = dpre.into_iter().map(|d| d.expect("every layer")).collect();
        let rest = WeightSaved {
            dpre,
            hidden: s.hidden,
        };
        Ok((dy.expect("at least one layer"), Box::new(rest)))
    }

    fn backward_weight(&mut self, stream: &Stream, input: &Tensor, saved: Saved) -> Result<()> {
        let s = downcast::<WeightSaved>("DenseGeluStage::backward_weight", saved)?;
        for (l, layer) in self.layers.iter_mut().enumerate() {
            layer.weight_grad(
                stream,
                &s.dpre[l],
                if l == 0 { input } else { &s.hidden[l - 1] },
            )?;
        }
        Ok(())
    }
}

/// Mean cross-entropy over every row of every micro-batch (the mini-batch mean a single device
/// computes), run on the last stage.
pub struct CrossEntropyLoss {
    targets: Vec<Tensor>,
    dloss: Vec<Tensor>,
    losses: Vec<Option<Tensor>>,
    total_rows: usize,
}

impl CrossEntropyLoss {
    /// `targets[mb]` are micro-batch `mb`'s class indices, one per row of the last stage's
    /// output.
    ///
    /// Errors: [`Error::InvalidArgument`] for no micro-batches or an empty one.
    pub fn new(device: &Device, targets: &[Vec<i32>]) -> Result<Self> {
        const OP: &str = "CrossEntropyLoss::new";
        if targets.is_empty() || targets.iter().any(|t| t.is_empty()) {
            return Err(Error::invalid(
                OP,
                "targets",
                "needs at least one micro-batch, none empty",
            ));
        }
        let total_rows: usize = targets.iter().map(Vec::len).sum();
        let scale = 1.0 / total_rows as f32;
        let mut t = Vec::with_capacity(targets.len());
        let mut d = Vec::with_capacity(targets.len());
        for mb in targets {
            t.push(Tensor::from_slice(device, mb, [mb.len()])?);
            d.push(Tensor::from_slice(
                device,
                &vec![scale; mb.len()],
                [mb.len()],
            )?);
        }
        Ok(CrossEntropyLoss {
            losses: (0..targets.len()).map(|_| None).collect(),
            targets: t,
            dloss: d,
            total_rows,
        })
    }

    /// The mini-batch mean loss of the micro-batches run so far (waits for them on `stream`,
    /// which must be ordered after the loss computations, e.g. the last stage's compute stream).
    ///
    /// Errors: [`Error::InvalidArgument`] when a micro-batch has not run.
    pub fn mean(&self, stream: &Stream) -> Result<f64> {
        let mut sum = 0.0;
        for (mb, l) in self.losses.iter().enumerate() {
            let l = l.as_ref().ok_or_else(|| {
                Error::invalid(
                    "CrossEntropyLoss::mean",
                    format!("micro-batch {mb}"),
                    "its loss was never computed",
                )
            })?;
            sum += l.to_f64_vec(stream)?.iter().sum::<f64>();
        }
        Ok(sum / self.total_rows as f64)
    }

    /// Forgets the recorded losses (before the next step).
    pub fn reset(&mut self) {
        self.losses.iter_mut().for_each(|l| *l = None);
    }
}

impl PipelineLoss for CrossEntropyLoss {
    fn forward_backward(&mut self, stream: &Stream, mb: usize, output: &Tensor) -> Result<Tensor> {
        const OP: &str = "CrossEntropyLoss::forward_backward";
        let n = self.targets.len();
        if mb >= n {
            return Err(Error::invalid(OP, "mb", format!("micro-batch {mb} of {n}")));
        }
        let dev = output.device();
        let rows = self.targets[mb].numel();
        let mut losses = Tensor::poisoned(dev, [rows], DType::F32)?;
        cross_entropy_fwd(stream, output, &self.targets[mb], &mut losses)?;
        let mut dlogits = Tensor::poisoned(dev, output.dims(), output.dtype())?;
        cross_entropy_bwd(
            stream,
            output,
            &self.targets[mb],
            &self.dloss[mb],
            &mut dlogits,
        )?;
        self.losses[mb] = Some(losses);
        Ok(dlogits)
    }
}
