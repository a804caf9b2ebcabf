//! Stream-ordered copies that cut a tensor into shards and paste shards back together: the data
//! movement the tensor-parallel mappings ([`crate::parallel::tp::mappings`]) do around their
//! collectives.
//!
//! | op | result |
//! |----|--------|
//! | [`copy`] | `out = x` |
//! | [`split_last`] | `out = x[..., i*c/p .. (i+1)*c/p]` (`c` = last dimension, `p` parts) |
//! | [`split_first`] | `out = x[i*n/p .. (i+1)*n/p, ...]` (`n` = first dimension) |
//! | [`concat_last`] | `out = [parts[0] \| parts[1] \| ...]` along the last dimension |
//! | [`concat_last_stacked`] | the same with the parts stacked along a new first dimension of one tensor (what an all-gather produces) |
//!
//! f32, bf16 and f16, on the CPU backend (the CUDA and emulated backends return
//! [`crate::Error::Unsupported`] until these copies get kernels). Like every op, outputs are
//! caller-provided tensors and may not alias an input.

use super::launch::{enqueue_host, float_dispatch, prepare_kernel};
use super::validate;
use crate::backend::emu::copy::{copy_segments, Segment};
use crate::device::BackendKind;
use crate::error::{Error, Result};
use crate::stream::{Stream, StreamImpl};
use crate::tensor::{view, view_mut, Tensor};

/// The slice-level loops, on typed host slices.
mod cpu {
    /// `out[r, :] = x[r, lo .. lo + w]` for every row `r` of the `[rows, c]` view of `x`.
    pub fn split_cols<T: Copy>(x: &[T], c: usize, lo: usize, w: usize, out: &mut [T]) {
        for (row, dst) in x.chunks_exact(c).zip(out.chunks_exact_mut(w)) {
            dst.copy_from_slice(&row[lo..lo + w]);
        }
    }

    /// `out[r, :] = [parts[0][r, :] | parts[1][r, :] | ...]`, part `q` being `widths[q]` wide.
    pub fn concat_cols<T: Copy>(parts: &[&[T]], widths: &[usize], out: &mut [T]) {
        let c: usize = widths.iter().sum();
        for (r, dst) in out.chunks_exact_mut(c).enumerate() {
            let mut off = 0;
            for (p, &w) in parts.iter().zip(widths) {
                dst[off..off + w].copy_from_slice(&p[r * w..(r + 1) * w]);
                off += w;
            }
        }
    }
}

/// `x` is a non-empty float tensor of rank at least 1.
/// Whether `stream` is an emulated GPU's (its copies are device copies, not host loops).
fn on_emu(stream: &Stream) -> bool {
    matches!(stream.imp(), StreamImpl::Cpu(_)) && stream.device().kind() == BackendKind::Emu
}

/// One segment copying `len` bytes.
fn seg(src: usize, src_off: usize, dst_off: usize, len: usize) -> Segment {
    Segment {
        src,
        src_off: src_off as u64,
        dst_off: dst_off as u64,
        len: len as u64,
    }
}

fn check_input(op: &'static str, what: &str, x: &Tensor) -> Result<()> {
    validate::min_rank(op, what, x, 1)?;
    validate::nonzero(op, what, x)?;
    validate::float(op, what, x)
}

/// `index` of `parts` equal parts of a dimension of size `dim`: returns the part's size.
fn part_size(
    op: &'static str,
    dim_name: &str,
    dim: usize,
    index: usize,
    parts: usize,
) -> Result<usize> {
    if parts == 0 {
        return Err(Error::invalid(op, "parts", "must be at least 1"));
    }
    if index >= parts {
        return Err(Error::invalid(
            op,
            "index",
            format!("{index} is out of range for {parts} parts"),
        ));
    }
    if dim % parts != 0 {
        return Err(Error::NotDivisible {
            what: format!("{op}: {dim_name}"),
            dim,
            parts,
            why: format!("split into {parts} equal parts"),
        });
    }
    Ok(dim / parts)
}

/// `out = x`: an identity copy into a caller-provided tensor of the same shape and dtype.
pub fn copy(stream: &Stream, x: &Tensor, out: &mut Tensor) -> Result<()> {
    const OP: &str = "copy";
    check_input(OP, "x", x)?;
    validate::shape(OP, "out", out, x.dims())?;
    validate::dtype(OP, "out", out, x.dtype())?;
    let reads = [("x", x)];
    let writes = [("out", &*out)];
    prepare_kernel(stream, OP, &reads, &writes)?;
    let dtype = x.dtype();
    if on_emu(stream) {
        let bytes = x.numel() * dtype.size_in_bytes();
        return copy_segments(stream, OP, &[x], out, vec![seg(0, 0, 0, bytes)]);
    }
    match stream.imp() {
        StreamImpl::Cpu(_) => {
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                let (r, mut w) = l.io();
                float_dispatch!(dtype, T => view_mut::<T>(&mut *w[0]).copy_from_slice(view::<T>(r[0])));
                Ok(())
            });
            Ok(())
        }
        StreamImpl::Cuda(_) => Err(super::unsupported(OP, stream)),
    }
}

/// `out = x[..., index*c/parts .. (index+1)*c/parts]`: part `index` of `parts` equal blocks of
/// the last dimension `c` of `x`. `out` has the shape of `x` with the last dimension `c/parts`.
///
/// Errors: [`Error::NotDivisible`] when `c % parts != 0`, [`Error::InvalidArgument`] when
/// `parts == 0` or `index >= parts`, and the usual shape/dtype/device errors.
pub fn split_last(
    stream: &Stream,
    x: &Tensor,
    index: usize,
    parts: usize,
    out: &mut Tensor,
) -> Result<()> {
    const OP: &str = "split_last";
    check_input(OP, "x", x)?;
    let c = x.shape().last();
    let w = part_size(
        OP,
        &format!("last dimension of x {:?}", x.dims()),
        c,
        index,
        parts,
    )?;
    let mut want = x.dims().to_vec();
    *want.last_mut().expect("rank >= 1") = w;
    validate::shape(OP, "out", out, &want)?;
    validate::dtype(OP, "out", out, x.dtype())?;
    let reads = [("x", x)];
    let writes = [("out", &*out)];
    prepare_kernel(stream, OP, &reads, &writes)?;
    let dtype = x.dtype();
    if on_emu(stream) {
        let es = dtype.size_in_bytes();
        let rows = x.numel() / c;
        let segs = (0..rows)
            .map(|r| seg(0, (r * c + index * w) * es, r * w * es, w * es))
            .collect();
        return copy_segments(stream, OP, &[x], out, segs);
    }
    match stream.imp() {
        StreamImpl::Cpu(_) => {
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                let (r, mut o) = l.io();
                float_dispatch!(dtype, T => cpu::split_cols::<T>(
                    view(r[0]), c, index * w, w, view_mut(&mut *o[0])
                ));
                Ok(())
            });
            Ok(())
        }
        StreamImpl::Cuda(_) => Err(super::unsupported(OP, stream)),
    }
}

/// `out = x[index*n/parts .. (index+1)*n/parts, ...]`: part `index` of `parts` equal blocks of
/// the first dimension `n` of `x` (one contiguous range). `out` has the shape of `x` with the
/// first dimension `n/parts`.
///
/// Errors: as [`split_last`], for the first dimension.
pub fn split_first(
    stream: &Stream,
    x: &Tensor,
    index: usize,
    parts: usize,
    out: &mut Tensor,
) -> Result<()> {
    const OP: &str = "split_first";
    check_input(OP, "x", x)?;
    let n = x.dims()[0];
    let m = part_size(
        OP,
        &format!("first dimension of x {:?}", x.dims()),
        n,
        index,
        parts,
    )?;
    let mut want = x.dims().to_vec();
    want[0] = m;
    validate::shape(OP, "out", out, &want)?;
    validate::dtype(OP, "out", out, x.dtype())?;
    let reads = [("x", x)];
    let writes = [("out", &*out)];
    prepare_kernel(stream, OP, &reads, &writes)?;
    let (dtype, len) = (x.dtype(), out.numel());
    if on_emu(stream) {
        let es = dtype.size_in_bytes();
        let segs = vec![seg(0, index * len * es, 0, len * es)];
        return copy_segments(stream, OP, &[x], out, segs);
    }
    match stream.imp() {
        StreamImpl::Cpu(_) => {
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                let (r, mut o) = l.io();
                float_dispatch!(dtype, T => view_mut::<T>(&mut *o[0])
                    .copy_from_slice(&view::<T>(r[0])[index * len..(index + 1) * len]));
                Ok(())
            });
            Ok(())
        }
        StreamImpl::Cuda(_) => Err(super::unsupported(OP, stream)),
    }
}

/// `out = [parts[0] | parts[1] | ...]` along the last dimension: row `r` of `out` is row `r` of
/// every part in order. The parts share their leading dimensions and dtype; their last
/// dimensions may differ (`out`'s is their sum). The inverse of [`split_last`] over every index.
///
/// Passing the same tensor twice is allowed (it is read, and locked, once).
pub fn concat_last(stream: &Stream, parts: &[&Tensor], out: &mut Tensor) -> Result<()> {
    const OP: &str = "concat_last";
    let first = *parts
        .first()
        .ok_or_else(|| Error::invalid(OP, "parts", "no parts to concatenate"))?;
    let names: Vec<String> = (0..parts.len()).map(|i| format!("parts[{i}]")).collect();
    let lead = &first.dims()[..first.dims().len().saturating_sub(1)];
    for (p, name) in parts.iter().zip(&names) {
        check_input(OP, name, p)?;
        validate::dtype(OP, name, p, first.dtype())?;
        let d = p.dims();
        if &d[..d.len() - 1] != lead {
            let mut expected = lead.to_vec();
            expected.push(p.shape().last());
            return Err(Error::ShapeMismatch {
                op: OP,
                what: format!("{name} (leading dimensions must match parts[0])"),
                expected,
                got: d.to_vec(),
            });
        }
    }
    let widths: Vec<usize> = parts.iter().map(|p| p.shape().last()).collect();
    let mut want = lead.to_vec();
    want.push(widths.iter().sum());
    validate::shape(OP, "out", out, &want)?;
    validate::dtype(OP, "out", out, first.dtype())?;
    // Each distinct buffer is read (and locked) once; `slot[q]` is part q's read.
    let mut reads: Vec<(&str, &Tensor)> = Vec::new();
    let mut slot = Vec::with_capacity(parts.len());
    for (p, name) in parts.iter().zip(&names) {
        match reads
            .iter()
            .position(|(_, t)| t.buffer_id() == p.buffer_id())
        {
            Some(i) => slot.push(i),
            None => {
                slot.push(reads.len());
                reads.push((name.as_str(), *p));
            }
        }
    }
    let writes = [("out", &*out)];
    prepare_kernel(stream, OP, &reads, &writes)?;
    let dtype = first.dtype();
    if on_emu(stream) {
        let es = dtype.size_in_bytes();
        let total: usize = widths.iter().sum();
        let rows = first.numel() / widths[0];
        let mut segs = Vec::with_capacity(rows * parts.len());
        for r in 0..rows {
            let mut col = 0;
            for (q, &wq) in widths.iter().enumerate() {
                segs.push(seg(q, r * wq * es, (r * total + col) * es, wq * es));
                col += wq;
            }
        }
        return copy_segments(stream, OP, parts, out, segs);
    }
    match stream.imp() {
        StreamImpl::Cpu(_) => {
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                let (r, mut o) = l.io();
                float_dispatch!(dtype, T => {
                    let srcs: Vec<&[T]> = slot.iter().map(|&i| view::<T>(r[i])).collect();
                    cpu::concat_cols::<T>(&srcs, &widths, view_mut(&mut *o[0]));
                });
                Ok(())
            });
            Ok(())
        }
        StreamImpl::Cuda(_) => Err(super::unsupported(OP, stream)),
    }
}

/// [`concat_last`] of the `p` slabs of `stacked` (shape `[p, ...lead, w]`) into `out` (shape
/// `[...lead, p*w]`): `out[..., q*w + j] = stacked[q, ..., j]`. This turns the output of an
/// all-gather along the first dimension into a concatenation along the last.
pub fn concat_last_stacked(stream: &Stream, stacked: &Tensor, out: &mut Tensor) -> Result<()> {
    const OP: &str = "concat_last_stacked";
    validate::min_rank(OP, "stacked", stacked, 2)?;
    check_input(OP, "stacked", stacked)?;
    let d = stacked.dims();
    let (p, w) = (d[0], stacked.shape().last());
    let mut want = d[1..d.len() - 1].to_vec();
    want.push(p * w);
    validate::shape(OP, "out", out, &want)?;
    validate::dtype(OP, "out", out, stacked.dtype())?;
    let reads = [("stacked", stacked)];
    let writes = [("out", &*out)];
    prepare_kernel(stream, OP, &reads, &writes)?;
    let dtype = stacked.dtype();
    let slab = stacked.numel() / p;
    if on_emu(stream) {
        let es = dtype.size_in_bytes();
        let rows = slab / w;
        let mut segs = Vec::with_capacity(rows * p);
        for r in 0..rows {
            for q in 0..p {
                segs.push(seg(
                    0,
                    (q * slab + r * w) * es,
                    (r * p * w + q * w) * es,
                    w * es,
                ));
            }
        }
        return copy_segments(stream, OP, &[stacked], out, segs);
    }
    match stream.imp() {
        StreamImpl::Cpu(_) => {
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                let (r, mut o) = l.io();
                float_dispatch!(dtype, T => {
                    let srcs: Vec<&[T]> = view::<T>(r[0]).chunks_exact(slab).collect();
                    cpu::concat_cols::<T>(&srcs, &vec![w; p], view_mut(&mut *o[0]));
                });
                Ok(())
            });
            Ok(())
        }
        StreamImpl::Cuda(_) => Err(super::unsupported(OP, stream)),
    }
}

/// `dst = src` element by element through f32 (exact for f32/bf16/f16 sources; one rounding on
/// a narrower destination).
fn convert<S: crate::dtype::Element, D: crate::dtype::Element>(src: &[S], dst: &mut [D]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = D::from_f32(s.to_f32());
    }
}

/// Checks that `[offset, offset + len)` lies inside `flat` (`flat_name`'s element count).
fn check_range(op: &'static str, flat: &Tensor, offset: usize, len: usize) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= flat.numel() => Ok(()),
        _ => Err(Error::invalid(
            op,
            "offset",
            format!(
                "elements [{offset}, {offset} + {len}) do not fit in a flat buffer of {}",
                flat.numel()
            ),
        )),
    }
}

/// `flat[offset .. offset + x.numel()] = x` (row-major flattened): packs a tensor into a range
/// of a flat buffer (a gradient into its data-parallel bucket, a bf16 parameter into an f32
/// master buffer). Dtypes may differ (any float types): the value is converted with one
/// round-to-nearest-even, exact when widening. The rest of `flat` is untouched.
///
/// Errors: [`Error::InvalidArgument`] when the range does not fit, and the usual dtype, device
/// and aliasing errors.
pub fn pack(stream: &Stream, x: &Tensor, flat: &mut Tensor, offset: usize) -> Result<()> {
    const OP: &str = "pack";
    check_input(OP, "x", x)?;
    check_input(OP, "flat", flat)?;
    let n = x.numel();
    check_range(OP, flat, offset, n)?;
    let reads = [("x", x)];
    let writes = [("flat", &*flat)];
    prepare_kernel(stream, OP, &reads, &writes)?;
    let (xd, fd) = (x.dtype(), flat.dtype());
    if on_emu(stream) {
        if xd != fd {
            return Err(super::unsupported(OP, stream));
        }
        let es = xd.size_in_bytes();
        return copy_segments(stream, OP, &[x], flat, vec![seg(0, 0, offset * es, n * es)]);
    }
    match stream.imp() {
        StreamImpl::Cpu(_) => {
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                let (r, mut w) = l.io();
                float_dispatch!(xd, S => float_dispatch!(fd, D => convert::<S, D>(
                    view::<S>(r[0]),
                    &mut view_mut::<D>(&mut *w[0])[offset..offset + n],
                )));
                Ok(())
            });
            Ok(())
        }
        StreamImpl::Cuda(_) => Err(super::unsupported(OP, stream)),
    }
}

/// `out = flat[offset .. offset + out.numel()]`, reshaped like `out`: the inverse of [`pack`]
/// (converting between float dtypes the same way).
///
/// Errors: as [`pack`].
pub fn unpack(stream: &Stream, flat: &Tensor, offset: usize, out: &mut Tensor) -> Result<()> {
    const OP: &str = "unpack";
    check_input(OP, "flat", flat)?;
    check_input(OP, "out", out)?;
    let n = out.numel();
    check_range(OP, flat, offset, n)?;
    let reads = [("flat", flat)];
    let writes = [("out", &*out)];
    prepare_kernel(stream, OP, &reads, &writes)?;
    let (fd, od) = (flat.dtype(), out.dtype());
    if on_emu(stream) {
        if fd != od {
            return Err(super::unsupported(OP, stream));
        }
        let es = fd.size_in_bytes();
        return copy_segments(
            stream,
            OP,
            &[flat],
            out,
            vec![seg(0, offset * es, 0, n * es)],
        );
    }
    match stream.imp() {
        StreamImpl::Cpu(_) => {
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                let (r, mut w) = l.io();
                float_dispatch!(fd, S => float_dispatch!(od, D => convert::<S, D>(
                    &view::<S>(r[0])[offset..offset + n],
                    view_mut::<D>(&mut *w[0]),
                )));
                Ok(())
            });
            Ok(())
        }
        StreamImpl::Cuda(_) => Err(super::unsupported(OP, stream)),
    }
}

#[cfg(test)]
mod tests {
    use super::cpu;

    #[test]
    fn split_then_concat_is_the_identity() {
        let (rows, c, p) = (3, 6, 3);
        let x: Vec<i32> = (0..(rows * c) as i32).collect();
        let w = c / p;
        let shards: Vec<Vec<i32>> = (0..p)
            .map(|i| {
                let mut o = vec![-1; rows * w];
                cpu::split_cols(&x, c, i * w, w, &mut o);
                o
            })
            .collect();
        assert_eq!(shards[1], vec![2, 3, 8, 9, 14, 15]);
        let refs: Vec<&[i32]> = shards.iter().map(|s| s.as_slice()).collect();
        let mut back = vec![-1; rows * c];
        cpu::concat_cols(&refs, &[w; 3], &mut back);
        assert_eq!(back, x);
    }

    #[test]
    fn concat_takes_parts_of_different_widths() {
        let (a, b) = ([1, 2, 3, 4], [9, 8]);
        let mut out = [0; 6];
        cpu::concat_cols(&[&a[..], &b[..]], &[2, 1], &mut out);
        assert_eq!(out, [1, 2, 9, 3, 4, 8]);
    }
}
