//! What every op does before its work is enqueued: device and aliasing checks, the checked-mode
//! access record, and (CPU) the closure that locks the operands and runs the fast path.

use crate::backend::cpu::{lock_all, Locked};
use crate::device::BackendKind;
use crate::error::{Error, Result};
use crate::stream::checked::{self, TrackedBuffer};
use crate::stream::Stream;
use crate::tensor::Tensor;
use std::sync::Arc;

/// Records a checked-mode access of `reads` and `writes` on `stream` (a no-op when unchecked).
pub(crate) fn check_access(stream: &Stream, reads: &[&Tensor], writes: &[&Tensor]) -> Result<()> {
    if !stream.device().is_checked() {
        return Ok(());
    }
    let r: Vec<TrackedBuffer<'_>> = reads.iter().map(|t| t.buffer().tracked()).collect();
    let w: Vec<TrackedBuffer<'_>> = writes.iter().map(|t| t.buffer().tracked()).collect();
    checked::record_op(stream.id(), &r, &w)
}

/// Validates that every operand lives on the stream's device and that no output aliases another
/// operand, then records the access. Returns nothing; the caller enqueues the work next.
///
/// For host-memory ops only: on an emulated device (whose buffers live in the emulator's memory)
/// this is [`Error::Unsupported`]; ops backed by a kernel use [`prepare_kernel`].
pub(crate) fn prepare(
    stream: &Stream,
    op: &'static str,
    reads: &[(&str, &Tensor)],
    writes: &[(&str, &Tensor)],
) -> Result<()> {
    if stream.device().kind() == BackendKind::Emu {
        return Err(crate::ops::unsupported(op, stream));
    }
    prepare_kernel(stream, op, reads, writes)
}

/// [`prepare`] for ops that run a kernel on every device backend (CUDA and emu alike).
pub(crate) fn prepare_kernel(
    stream: &Stream,
    op: &'static str,
    reads: &[(&str, &Tensor)],
    writes: &[(&str, &Tensor)],
) -> Result<()> {
    for (name, t) in reads.iter().chain(writes) {
        stream.same_device(op, name, t.device())?;
    }
    for (i, (wn, w)) in writes.iter().enumerate() {
        let others = reads.iter().chain(writes.iter().skip(i + 1));
        for (on, o) in others {
            if o.buffer_id() == w.buffer_id() {
                return Err(Error::Aliasing {
                    op,
                    first: wn.to_string(),
                    second: on.to_string(),
                    buffer: w.buffer_id(),
                });
            }
        }
    }
    if !stream.device().is_checked() {
        return Ok(()); // nothing to record, and nothing to allocate on the hot path
    }
    let r: Vec<&Tensor> = reads.iter().map(|(_, t)| *t).collect();
    let w: Vec<&Tensor> = writes.iter().map(|(_, t)| *t).collect();
    check_access(stream, &r, &w)
}

/// Enqueues a CPU op: `f` runs on the stream's worker with the operands locked (reads in the
/// order given, then writes). Call after [`prepare`].
pub(crate) fn enqueue_host<F>(
    stream: &Stream,
    op: &'static str,
    reads: &[(&str, &Tensor)],
    writes: &[(&str, &Tensor)],
    f: F,
) where
    F: FnOnce(&mut Locked<'_>) -> Result<()> + Send + 'static,
{
    let rb: Vec<Arc<_>> = reads.iter().map(|(_, t)| t.buffer().clone()).collect();
    let wb: Vec<Arc<_>> = writes.iter().map(|(_, t)| t.buffer().clone()).collect();
    stream.push_host(op, move || {
        let mut locked = lock_all(&rb, &wb);
        f(&mut locked)
    });
}

/// Runs `$body` with `$T` bound to the Rust element type of the float dtype `$dtype`.
macro_rules! float_dispatch {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::dtype::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::dtype::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            $crate::dtype::DType::F16 => {
                type $T = half::f16;
                $body
            }
            $crate::dtype::DType::I32 => unreachable!("float dtype validated before enqueue"),
        }
    };
}
pub(crate) use float_dispatch;
