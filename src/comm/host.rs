//! What every host-memory communicator does when a call is enqueued: validate the operands,
//! record the checked-mode access, and run the transfer on the stream's worker with the buffers
//! locked and published as raw pointers.

use super::reduce::Raw;
use super::Work;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::launch::prepare;
use crate::stream::{Stream, StreamImpl};
use crate::tensor::{HostData, Tensor};
use std::sync::{Arc, Mutex};

pub(crate) fn comm_dtype(op: &'static str, what: &str, t: &Tensor) -> Result<DType> {
    match t.dtype() {
        DType::F32 | DType::BF16 => Ok(t.dtype()),
        d => Err(Error::UnsupportedDType {
            op,
            what: what.into(),
            dtype: d,
        }),
    }
}

pub(crate) fn same_dtype(op: &'static str, what: &str, t: &Tensor, want: DType) -> Result<()> {
    if t.dtype() != want {
        return Err(Error::DTypeMismatch {
            op,
            what: what.into(),
            expected: want,
            got: t.dtype(),
        });
    }
    Ok(())
}

pub(crate) fn count(op: &'static str, what: &str, t: &Tensor, want: usize) -> Result<()> {
    if t.numel() != want {
        return Err(Error::ShapeMismatch {
            op,
            what: format!("{what} element count"),
            expected: vec![want],
            got: vec![t.numel()],
        });
    }
    Ok(())
}

/// Enqueues `run` on `stream` with `reads`/`writes` (at most one of each: a communication call
/// has one input and one output at most) locked and published as raw buffers.
///
/// Allocation-free apart from the stream's task and the returned [`Work`]: the hot path of
/// every host communicator goes through here.
pub(crate) fn enqueue(
    stream: &Stream,
    op: &'static str,
    reads: &[(&str, &Tensor)],
    writes: &[(&str, &Tensor)],
    run: impl FnOnce(&[Raw], &[Raw]) -> Result<()> + Send + 'static,
) -> Result<Work> {
    if !matches!(stream.imp(), StreamImpl::Cpu(_)) {
        return Err(Error::Unsupported {
            op,
            backend: format!("{} (threads communicator)", stream.device().kind()),
        });
    }
    if reads.len() > 1 || writes.len() > 1 {
        return Err(Error::invalid(
            op,
            "operands",
            "a communication call takes at most one input and one output",
        ));
    }
    prepare(stream, op, reads, writes)?;
    let status: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
    let slot = status.clone();
    let rb = reads.first().map(|(_, t)| t.buffer().clone());
    let wb = writes.first().map(|(_, t)| t.buffer().clone());
    stream.push_host(op, move || {
        // Lock in ascending buffer id, as `lock_all` does (the op layer has ruled out aliasing).
        let write_first = matches!((&rb, &wb), (Some(r), Some(w)) if w.id() < r.id());
        let lock_w = || {
            wb.as_ref()
                .map(|b| b.host().write().unwrap_or_else(|p| p.into_inner()))
        };
        let lock_r = || {
            rb.as_ref()
                .map(|b| b.host().read().unwrap_or_else(|p| p.into_inner()))
        };
        let (rg, mut wg) = if write_first {
            let w = lock_w();
            (lock_r(), w)
        } else {
            (lock_r(), lock_w())
        };
        let raw_r = rg.as_deref().map(raw_of);
        let raw_w = wg.as_deref_mut().map(raw_of_mut);
        let out = run(raw_r.as_slice(), raw_w.as_slice());
        drop((rg, wg));
        if let Err(e) = &out {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        }
        out
    });
    Ok(Work::new(stream.record_event()?, stream.clone(), status))
}

/// The element offset of each of `counts`' consecutive blocks.
#[cfg(any(feature = "mpi", feature = "nccl"))]
pub(crate) fn offsets(counts: &[usize]) -> Vec<usize> {
    let mut o = Vec::with_capacity(counts.len());
    let mut acc = 0;
    for c in counts {
        o.push(acc);
        acc += c;
    }
    o
}

pub(crate) fn raw_of(h: &HostData) -> Raw {
    Raw {
        ptr: h.as_bytes().as_ptr() as *mut u8,
        len: h.len(),
        dtype: h.dtype(),
    }
}

pub(crate) fn raw_of_mut(h: &mut HostData) -> Raw {
    let (len, dtype) = (h.len(), h.dtype());
    Raw {
        ptr: h.as_bytes_mut().as_mut_ptr(),
        len,
        dtype,
    }
}
