//! Cross-entropy of logits against class indices, forward (per-row loss) and backward.
//!
//! CPU backend: `crate::backend::cpu::ops::cross_entropy`; CUDA and emulated backends: the
//! kernels of `kernels/loss/cross_entropy.cu` (f32 and bf16 logits, one block per row). An
//! out-of-range target fails the op with [`Error::IndexOutOfRange`] on every backend: on the
//! CPU and the emulator at the stream's next synchronize (the check runs with the op); on CUDA
//! the kernel records the first bad row in a flag that the op copies back, **synchronizing the
//! stream**, so the error is returned by the op call itself (and the bad rows' outputs are NaN).

use super::launch::{enqueue_host, float_dispatch, prepare_kernel};
use super::validate;
use crate::backend::cpu::ops::cross_entropy as cpu;
use crate::backend::cuda::layers::{self as dev, device_ptr, param_bytes};
use crate::backend::emu::layers as emu;
use crate::device::BackendKind;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::abi::FtCrossEntropyParams;
use crate::stream::{Stream, StreamImpl};
use crate::tensor::{view, view_mut, Tensor};
use std::ffi::c_void;

/// The kernel image of these ops.
const MODULE: &str = "loss/cross_entropy";

/// Runs the flagged cross-entropy kernel `function` on a CUDA or emulated stream; `p` has a
/// null `error`, filled in here.
fn run_kernel(
    stream: &Stream,
    op: &'static str,
    function: String,
    p: FtCrossEntropyParams,
    tensors: &[&Tensor],
    targets: &Tensor,
) -> Result<()> {
    let (rows, classes) = (p.rows as usize, p.classes as usize);
    let launch = dev::rowwise(MODULE, function, rows, classes, 1, 1);
    match stream.imp() {
        StreamImpl::Cuda(s) => {
            dev::run_cuda_flagged(stream, s, op, &launch, targets, classes, |flag| {
                FtCrossEntropyParams { error: flag, ..p }
            })
        }
        StreamImpl::Cpu(_) => {
            let keep = tensors.iter().map(|t| t.buffer().clone()).collect();
            let build = |flag: u64| {
                param_bytes(&FtCrossEntropyParams {
                    error: flag as usize as *mut c_void,
                    ..p
                })
            };
            emu::launch_flagged(stream, op, launch, build, keep, targets, classes)
        }
    }
}

/// Whether `stream` runs its ops on the host (the CPU backend) rather than through a kernel.
fn on_host(stream: &Stream) -> bool {
    matches!(stream.imp(), StreamImpl::Cpu(_)) && stream.device().kind() != BackendKind::Emu
}

fn check(op: &'static str, logits: &Tensor, targets: &Tensor) -> Result<(usize, usize)> {
    validate::rank(op, "logits", logits, 2)?;
    validate::nonzero(op, "logits", logits)?;
    validate::float(op, "logits", logits)?;
    let (n, v) = (logits.dims()[0], logits.dims()[1]);
    validate::shape(op, "targets", targets, &[n])?;
    validate::dtype(op, "targets", targets, DType::I32)?;
    Ok((n, v))
}

/// Targets live on the device, so their range is checked where the op runs, like a device-side
/// assert: a bad index fails the op (reported at the stream's next synchronize) and nothing of
/// the outputs is trusted.
fn check_targets(op: &'static str, t: &[i32], classes: usize) -> Result<()> {
    match t.iter().position(|&c| c < 0 || c as usize >= classes) {
        None => Ok(()),
        Some(position) => Err(Error::IndexOutOfRange {
            op,
            position,
            index: t[position] as i64,
            classes,
        }),
    }
}

/// `losses[r] = logsumexp(logits[r, :]) - logits[r, targets[r]]` (f32 per row; the caller
/// reduces, e.g. a mean over rows). `logits` is `[n, vocab]`, `targets` is i32 `[n]`.
pub fn cross_entropy_fwd(
    stream: &Stream,
    logits: &Tensor,
    targets: &Tensor,
    losses: &mut Tensor,
) -> Result<()> {
    const OP: &str = "cross_entropy_fwd";
    let (n, v) = check(OP, logits, targets)?;
    validate::shape(OP, "losses", losses, &[n])?;
    validate::dtype(OP, "losses", losses, DType::F32)?;
    let reads = [("logits", logits), ("targets", targets)];
    let writes = [("losses", &*losses)];
    prepare_kernel(stream, OP, &reads, &writes)?;
    let dtype = logits.dtype();
    if on_host(stream) {
        enqueue_host(stream, OP, &reads, &writes, move |l| {
            let (r, mut w) = l.io();
            let t = view::<i32>(r[1]);
            check_targets(OP, t, v)?;
            float_dispatch!(dtype, T => cpu::cross_entropy_fwd::<T>(
                n, v, view(r[0]), t, view_mut(&mut *w[0]),
            ));
            Ok(())
        });
        return Ok(());
    }
    let sfx = dev::suffix(OP, "logits", dtype)?;
    let p = FtCrossEntropyParams {
        logits: device_ptr(stream, logits),
        targets: device_ptr(stream, targets),
        dloss: std::ptr::null(),
        out: device_ptr(stream, losses),
        error: std::ptr::null_mut(),
        rows: n as u64,
        classes: v as u64,
    };
    let fun = format!("ft_cross_entropy_fwd_{sfx}");
    run_kernel(stream, OP, fun, p, &[logits, targets, losses], targets)
}

/// Backward of [`cross_entropy_fwd`]: `dlogits[r, c] = (softmax(logits[r])[c] - [c == t_r]) *
/// dloss[r]` (for a mean over rows pass `dloss = 1/n`).
pub fn cross_entropy_bwd(
    stream: &Stream,
    logits: &Tensor,
    targets: &Tensor,
    dloss: &Tensor,
    dlogits: &mut Tensor,
) -> Result<()> {
    const OP: &str = "cross_entropy_bwd";
    let (n, v) = check(OP, logits, targets)?;
    validate::shape(OP, "dloss", dloss, &[n])?;
    validate::dtype(OP, "dloss", dloss, DType::F32)?;
    validate::shape(OP, "dlogits", dlogits, &[n, v])?;
    validate::dtype(OP, "dlogits", dlogits, logits.dtype())?;
    let reads = [("logits", logits), ("targets", targets), ("dloss", dloss)];
    let writes = [("dlogits", &*dlogits)];
    prepare_kernel(stream, OP, &reads, &writes)?;
    let dtype = logits.dtype();
    if on_host(stream) {
        enqueue_host(stream, OP, &reads, &writes, move |l| {
            let (r, mut w) = l.io();
            let t = view::<i32>(r[1]);
            check_targets(OP, t, v)?;
            float_dispatch!(dtype, T => cpu::cross_entropy_bwd::<T>(
                n, v, view(r[0]), t, view(r[2]), view_mut(&mut *w[0]),
            ));
            Ok(())
        });
        return Ok(());
    }
    let sfx = dev::suffix(OP, "logits", dtype)?;
    let p = FtCrossEntropyParams {
        logits: device_ptr(stream, logits),
        targets: device_ptr(stream, targets),
        dloss: device_ptr(stream, dloss),
        out: device_ptr(stream, dlogits),
        error: std::ptr::null_mut(),
        rows: n as u64,
        classes: v as u64,
    };
    let fun = format!("ft_cross_entropy_bwd_{sfx}");
    run_kernel(
        stream,
        OP,
        fun,
        p,
        &[logits, targets, dloss, dlogits],
        targets,
    )
}
