//! Device-to-device copies on the emulator (what `cuMemcpyDtoDAsync` / `cuMemcpy2DAsync` do on
//! a GPU): the shard ops (split, concat, copy, pack, unpack) move bytes, they compute nothing,
//! so they need no kernel. Each copy is a list of byte segments, enqueued on the stream in order
//! with the other work.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::stream::Stream;
use crate::tensor::{Buffer, Tensor};

/// One segment: bytes `[src_off, src_off + len)` of source `src` to `[dst_off, dst_off + len)`
/// of the destination.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Segment {
    /// Index into the sources.
    pub src: usize,
    /// Byte offset in that source.
    pub src_off: u64,
    /// Byte offset in the destination.
    pub dst_off: u64,
    /// Bytes.
    pub len: u64,
}

/// Enqueues the copies of `segments` from `srcs` into `dst` on `stream` (an emulated device's
/// stream; the caller validated shapes and recorded the accesses).
pub(crate) fn copy_segments(
    stream: &Stream,
    op: &'static str,
    srcs: &[&Tensor],
    dst: &Tensor,
    segments: Vec<Segment>,
) -> Result<()> {
    let bufs: Vec<Arc<Buffer>> = srcs.iter().map(|t| t.buffer().clone()).collect();
    let out = dst.buffer().clone();
    if segments.iter().any(|s| s.src >= bufs.len()) {
        return Err(Error::invalid(op, "segments", "a segment names no source"));
    }
    stream.push_host(op, move || {
        let mem = super::memory();
        let d = out.emu().addr();
        for s in &segments {
            let src = bufs[s.src].emu().addr();
            mem.copy(d + s.dst_off, src + s.src_off, s.len)
                .map_err(|e| Error::Emu {
                    kernel: format!("{op} (device copy)"),
                    error: e,
                })?;
        }
        Ok(())
    });
    Ok(())
}
