//! What every host-memory communicator does when a call is enqueued: validate the operands,
//! record the checked-mode access, and run the transfer on the stream's worker with the buffers
//! locked and published as raw pointers.

use super::reduce::Raw;
use super::Work;
use crate::backend::cpu::lock_all;
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

/// Enqueues `run` on `stream` with `reads`/`writes` locked and published as raw buffers.
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
    prepare(stream, op, reads, writes)?;
    let status: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
    let slot = status.clone();
    let rb: Vec<_> = reads.iter().map(|(_, t)| t.buffer().clone()).collect();
    let wb: Vec<_> = writes.iter().map(|(_, t)| t.buffer().clone()).collect();
    stream.push_host(op, move || {
        let mut locked = lock_all(&rb, &wb);
        let (r, w) = locked.io();
        let raw_r: Vec<Raw> = r.iter().map(|h| raw_of(h)).collect();
        let raw_w: Vec<Raw> = w.into_iter().map(raw_of_mut).collect();
        let out = run(&raw_r, &raw_w);
        drop(locked);
        if let Err(e) = &out {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        }
        out
    });
    Ok(Work::new(stream.record_event()?, stream.clone(), status))
}

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
