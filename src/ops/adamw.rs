//! One AdamW step (PyTorch semantics: decoupled weight decay, bias-corrected moments).
//!
//! CPU backend: `crate::backend::cpu::ops::adamw`; CUDA and emulated backends: the kernel of
//! `kernels/optim/adamw.cu` (f32 and bf16 parameters, f32 moments), with the same f32 operation
//! order and the bias corrections computed on the host in f64, like the CPU backend.

use super::launch::{enqueue_host, float_dispatch, prepare_kernel};
use super::validate;
use crate::backend::cpu::ops::adamw::{self as cpu, AdamW};
use crate::backend::cuda::layers::{self as dev, device_ptr};
use crate::device::BackendKind;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::abi::FtAdamWParams;
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
    prepare_kernel(stream, OP, &reads, &writes)?;
    let dtype = param.dtype();
    let cfg = *cfg;
    if matches!(stream.imp(), StreamImpl::Cpu(_)) && stream.device().kind() != BackendKind::Emu {
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
        return Ok(());
    }
    let sfx = dev::suffix(OP, "param", dtype)?;
    // The same scalars as the CPU backend's `adamw_step`.
    let t = step.min(i32::MAX as u32) as i32;
    let p = FtAdamWParams {
        param: device_ptr(stream, param),
        grad: device_ptr(stream, grad),
        m: device_ptr(stream, m),
        v: device_ptr(stream, v),
        n: param.numel() as u64,
        lr: cfg.lr,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        one_minus_beta1: 1.0 - cfg.beta1,
        one_minus_beta2: 1.0 - cfg.beta2,
        eps: cfg.eps,
        inv_bc1: (1.0 / (1.0 - (cfg.beta1 as f64).powi(t))) as f32,
        inv_bc2: (1.0 / (1.0 - (cfg.beta2 as f64).powi(t))) as f32,
        decay: 1.0 - cfg.lr * cfg.weight_decay,
        reserved: 0,
    };
    let launch = dev::flat("optim/adamw", format!("ft_adamw_{sfx}"), param.numel());
    dev::run(stream, OP, launch, &p, &[param, grad, m, v])
}
