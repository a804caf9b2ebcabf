//! One AdamW step (PyTorch semantics: decoupled weight decay, bias-corrected moments).

use super::launch::{enqueue_host, float_dispatch, prepare};
use super::validate;
use crate::backend::cpu::ops::adamw::{self as cpu, AdamW};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::stream::{Stream, StreamImpl};
use crate::tensor::{view, view_mut, Tensor};

/// Updates `param` in place from `grad`, with the f32 moment buffers `m` and `v` (same element
/// count as `param`). `step` is the 1-based step number used for bias correction.
pub fn adamw_step(
    stream: &Stream,
    cfg: &AdamW,
    step: u32,
    param: &mut Tensor,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
) -> Result<()> {
    const OP: &str = "adamw_step";
    validate::nonzero(OP, "param", param)?;
    validate::float(OP, "param", param)?;
    validate::shape(OP, "grad", grad, param.dims())?;
    validate::dtype(OP, "grad", grad, param.dtype())?;
    for (n, t) in [("m", &*m), ("v", &*v)] {
        validate::shape(OP, n, t, param.dims())?;
        validate::dtype(OP, n, t, DType::F32)?;
    }
    if step == 0 {
        return Err(Error::invalid(OP, "step", "steps are numbered from 1"));
    }
    for (n, x) in [
        ("lr", cfg.lr),
        ("eps", cfg.eps),
        ("weight_decay", cfg.weight_decay),
    ] {
        validate::finite(OP, n, x)?;
        if x < 0.0 {
            return Err(Error::invalid(OP, n, format!("{x} must not be negative")));
        }
    }
    for (n, b) in [("beta1", cfg.beta1), ("beta2", cfg.beta2)] {
        if !(0.0..1.0).contains(&b) {
            return Err(Error::invalid(OP, n, format!("{b} must lie in [0, 1)")));
        }
    }
    let reads = [("grad", grad)];
    let writes = [("param", &*param), ("m", &*m), ("v", &*v)];
    prepare(stream, OP, &reads, &writes)?;
    let dtype = param.dtype();
    let cfg = *cfg;
    match stream.imp() {
        StreamImpl::Cpu(_) => {
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                let (r, mut w) = l.io();
                let [pd, md, vd] = &mut w[..] else {
                    unreachable!("three outputs")
                };
                float_dispatch!(dtype, T => cpu::adamw_step::<T>(
                    &cfg, step, view_mut(pd), view(r[0]), view_mut(md), view_mut(vd),
                ));
                Ok(())
            });
            Ok(())
        }
        StreamImpl::Cuda(_) => Err(super::unsupported(OP, stream)),
    }
}
