//! Cross-entropy of logits against class indices, forward (per-row loss) and backward.

use super::launch::{enqueue_host, float_dispatch, prepare};
use super::validate;
use crate::backend::cpu::ops::cross_entropy as cpu;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::stream::{Stream, StreamImpl};
use crate::tensor::{view, view_mut, Tensor};

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
    prepare(stream, OP, &reads, &writes)?;
    let dtype = logits.dtype();
    match stream.imp() {
        StreamImpl::Cpu(_) => {
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                let (r, mut w) = l.io();
                let t = view::<i32>(r[1]);
                check_targets(OP, t, v)?;
                float_dispatch!(dtype, T => cpu::cross_entropy_fwd::<T>(
                    n, v, view(r[0]), t, view_mut(&mut *w[0]),
                ));
                Ok(())
            });
            Ok(())
        }
        StreamImpl::Cuda(_) => Err(super::unsupported(OP, stream)),
    }
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
    prepare(stream, OP, &reads, &writes)?;
    let dtype = logits.dtype();
    match stream.imp() {
        StreamImpl::Cpu(_) => {
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                let (r, mut w) = l.io();
                let t = view::<i32>(r[1]);
                check_targets(OP, t, v)?;
                float_dispatch!(dtype, T => cpu::cross_entropy_bwd::<T>(
                    n, v, view(r[0]), t, view(r[2]), view_mut(&mut *w[0]),
                ));
                Ok(())
            });
            Ok(())
        }
        StreamImpl::Cuda(_) => Err(super::unsupported(OP, stream)),
    }
}
