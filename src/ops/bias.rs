//! Bias and elementwise helpers of the linear layers ([`crate::parallel::tp::linear`]):
//!
//! | op | result |
//! |----|--------|
//! | [`bias_add`] | `y[r, c] = x[r, c] + bias[c]` (the bias broadcast over the rows) |
//! | [`column_sum`] | `out[c] = sum_r x[r, c]`, or `out[c] += ...` (a bias gradient) |
//! | [`add`] | `out = a + b`, elementwise |
//!
//! "Rows" are every index but the last: a tensor of shape `[d0, ..., dk, c]` is `d0 * ... * dk`
//! rows of `c` columns. Arithmetic is f32 for every float dtype (bf16 and f16 are widened), with
//! one rounding per stored value. On the CUDA and emulated backends they run the kernels of
//! `kernels/elementwise/residual.cu` (f32 and bf16; the same results as the CPU backend, bit for
//! bit). Like every op, outputs are caller-provided tensors and may not alias an input.

use super::launch::{enqueue_host, float_dispatch, prepare_kernel};
use super::validate;
use crate::backend::cuda::layers::{self as dev, device_ptr};
use crate::device::BackendKind;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::abi::{FtAddParams, FtBiasAddParams, FtColumnSumParams};
use crate::stream::{Stream, StreamImpl};
use crate::tensor::{view, view_mut, Tensor};

/// The kernel image of these ops.
const MODULE: &str = "elementwise/residual";

/// Whether `stream` runs its ops on the host (the CPU backend) rather than through a kernel.
fn on_host(stream: &Stream) -> bool {
    matches!(stream.imp(), StreamImpl::Cpu(_)) && stream.device().kind() != BackendKind::Emu
}

/// Whether every tensor's device address is 4-byte aligned (the bf16x2 paths' condition).
fn aligned4(stream: &Stream, ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| device_ptr(stream, t) as usize % 4 == 0)
}

/// The slice-level loops, on typed host slices.
mod cpu {
    use crate::dtype::Element;

    /// `y[r, c] = x[r, c] + bias[c]`, in f32, rounded once.
    pub fn bias_add<T: Element>(cols: usize, x: &[T], bias: &[T], y: &mut [T]) {
        let b32: Vec<f32> = bias.iter().map(|v| v.to_f32()).collect();
        for (yr, xr) in y.chunks_exact_mut(cols).zip(x.chunks_exact(cols)) {
            for ((o, &xi), &bi) in yr.iter_mut().zip(xr).zip(&b32) {
                *o = T::from_f32(xi.to_f32() + bi);
            }
        }
    }

    /// The column sums of `x` (`[rows, cols]`) in f32: rows added in increasing order, starting
    /// from zero.
    pub fn column_sum_f32<T: Element>(cols: usize, x: &[T]) -> Vec<f32> {
        let mut acc = vec![0.0f32; cols];
        for row in x.chunks_exact(cols) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v.to_f32();
            }
        }
        acc
    }

    /// `out = sums` or, accumulating, `out = out + sums` (one f32 addition, one rounding).
    pub fn store<O: Element>(sums: &[f32], out: &mut [O], accumulate: bool) {
        for (o, &s) in out.iter_mut().zip(sums) {
            *o = if accumulate {
                O::from_f32(o.to_f32() + s)
            } else {
                O::from_f32(s)
            };
        }
    }

    /// `out = a + b`, in f32, rounded once.
    pub fn add<T: Element>(a: &[T], b: &[T], out: &mut [T]) {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = T::from_f32(x.to_f32() + y.to_f32());
        }
    }
}

/// `x` is a non-empty float tensor of rank at least 1; returns its number of columns (the last
/// dimension).
fn check_matrix(op: &'static str, what: &str, x: &Tensor) -> Result<usize> {
    validate::min_rank(op, what, x, 1)?;
    validate::nonzero(op, what, x)?;
    validate::float(op, what, x)?;
    Ok(x.shape().last())
}

/// `y = x + bias`, `bias` (shape `[c]`, `c` the last dimension of `x`) broadcast over the rows.
/// `x`, `bias` and `y` share a float dtype; the sum is taken in f32 and rounded once.
///
/// Errors: the usual shape, rank, dtype, device and aliasing errors (`y` may not be `x`).
pub fn bias_add(stream: &Stream, x: &Tensor, bias: &Tensor, y: &mut Tensor) -> Result<()> {
    const OP: &str = "bias_add";
    let cols = check_matrix(OP, "x", x)?;
    validate::shape(OP, "bias", bias, &[cols])?;
    validate::dtype(OP, "bias", bias, x.dtype())?;
    validate::shape(OP, "y", y, x.dims())?;
    validate::dtype(OP, "y", y, x.dtype())?;
    let reads = [("x", x), ("bias", bias)];
    let writes = [("y", &*y)];
    prepare_kernel(stream, OP, &reads, &writes)?;
    let dtype = x.dtype();
    if on_host(stream) {
        enqueue_host(stream, OP, &reads, &writes, move |l| {
            let (r, mut w) = l.io();
            float_dispatch!(dtype, T => cpu::bias_add::<T>(
                cols, view(r[0]), view(r[1]), view_mut(&mut *w[0])
            ));
            Ok(())
        });
        return Ok(());
    }
    let sfx = dev::suffix(OP, "x", dtype)?;
    let rows = x.shape().rows();
    let pairs = dtype == DType::BF16 && cols % 2 == 0 && aligned4(stream, &[x, bias, y]);
    let p = FtBiasAddParams {
        x: device_ptr(stream, x),
        bias: device_ptr(stream, bias),
        y: device_ptr(stream, y),
        rows: rows as u64,
        cols: cols as u64,
    };
    let launch = dev::flat(
        MODULE,
        format!("ft_bias_add_{sfx}"),
        dev::bias_add_items(rows, cols, pairs),
    );
    dev::run(stream, OP, launch, &p, &[x, bias, y])
}

/// The column sums of `x` (every row of the last dimension added up): `out[c] = sum_r x[r, c]`,
/// or with `accumulate`, `out[c] = out[c] + sum_r x[r, c]` (a bias gradient accumulated like
/// Megatron's `main_grad`).
///
/// `out` has shape `[c]` and dtype f32 or the dtype of `x` (an f32 `out` for bf16 `x` is the
/// f32 main gradient of a bf16 parameter). The sum is formed in f32, adding the rows in
/// increasing order starting from zero, then stored (or added to `out`) with one rounding: the
/// result is bitwise reproducible.
///
/// Errors: the usual shape, rank, dtype, device and aliasing errors.
pub fn column_sum(stream: &Stream, x: &Tensor, out: &mut Tensor, accumulate: bool) -> Result<()> {
    const OP: &str = "column_sum";
    let cols = check_matrix(OP, "x", x)?;
    validate::shape(OP, "out", out, &[cols])?;
    if out.dtype() != DType::F32 && out.dtype() != x.dtype() {
        return Err(Error::DTypeMismatch {
            op: OP,
            what: "out (must be f32 or the dtype of x)".into(),
            expected: x.dtype(),
            got: out.dtype(),
        });
    }
    let reads = [("x", x)];
    let writes = [("out", &*out)];
    prepare_kernel(stream, OP, &reads, &writes)?;
    let (xd, od) = (x.dtype(), out.dtype());
    if on_host(stream) {
        enqueue_host(stream, OP, &reads, &writes, move |l| {
            let (r, mut w) = l.io();
            let o = &mut *w[0];
            float_dispatch!(xd, T => {
                let sums = cpu::column_sum_f32::<T>(cols, view(r[0]));
                if od == DType::F32 {
                    cpu::store::<f32>(&sums, view_mut(o), accumulate)
                } else {
                    cpu::store::<T>(&sums, view_mut(o), accumulate)
                }
            });
            Ok(())
        });
        return Ok(());
    }
    let xs = dev::suffix(OP, "x", xd)?;
    let os = dev::suffix(OP, "out", od)?;
    let p = FtColumnSumParams {
        x: device_ptr(stream, x),
        out: device_ptr(stream, out),
        rows: x.shape().rows() as u64,
        cols: cols as u64,
        accumulate: accumulate as u64,
    };
    let launch = dev::flat(MODULE, format!("ft_column_sum_{xs}_{os}"), cols);
    dev::run(stream, OP, launch, &p, &[x, out])
}

/// `out = a + b`, elementwise, for tensors of one shape and float dtype (sum in f32, rounded
/// once).
///
/// Errors: the usual shape, rank, dtype, device and aliasing errors (`out` may not be `a` or
/// `b`).
pub fn add(stream: &Stream, a: &Tensor, b: &Tensor, out: &mut Tensor) -> Result<()> {
    const OP: &str = "add";
    check_matrix(OP, "a", a)?;
    validate::shape(OP, "b", b, a.dims())?;
    validate::dtype(OP, "b", b, a.dtype())?;
    validate::shape(OP, "out", out, a.dims())?;
    validate::dtype(OP, "out", out, a.dtype())?;
    let reads = [("a", a), ("b", b)];
    let writes = [("out", &*out)];
    prepare_kernel(stream, OP, &reads, &writes)?;
    let dtype = a.dtype();
    if on_host(stream) {
        enqueue_host(stream, OP, &reads, &writes, move |l| {
            let (r, mut w) = l.io();
            float_dispatch!(dtype, T => cpu::add::<T>(
                view(r[0]), view(r[1]), view_mut(&mut *w[0])
            ));
            Ok(())
        });
        return Ok(());
    }
    let sfx = dev::suffix(OP, "a", dtype)?;
    let n = a.numel();
    let pairs = dtype == DType::BF16 && n % 2 == 0 && aligned4(stream, &[a, b, out]);
    let p = FtAddParams {
        a: device_ptr(stream, a),
        b: device_ptr(stream, b),
        out: device_ptr(stream, out),
        n: n as u64,
    };
    let launch = dev::flat(
        MODULE,
        format!("ft_add_{sfx}"),
        if pairs { n / 2 } else { n },
    );
    dev::run(stream, OP, launch, &p, &[a, b, out])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;
    use half::bf16;

    #[test]
    fn bias_add_broadcasts_over_rows() {
        let dev = Device::cpu();
        let s = dev.new_stream().unwrap();
        let x = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]).unwrap();
        let b = Tensor::from_slice(&dev, &[10.0f32, 20.0, 30.0], [3]).unwrap();
        let mut y = Tensor::poisoned(&dev, [2, 3], DType::F32).unwrap();
        bias_add(&s, &x, &b, &mut y).unwrap();
        assert_eq!(
            y.to_vec::<f32>(&s).unwrap(),
            [11.0, 22.0, 33.0, 14.0, 25.0, 36.0]
        );
    }

    #[test]
    fn column_sum_stores_and_accumulates_in_f32() {
        let dev = Device::cpu();
        let s = dev.new_stream().unwrap();
        let xv: Vec<bf16> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        let x = Tensor::from_slice(&dev, &xv, [3, 2]).unwrap();
        let mut out = Tensor::poisoned(&dev, [2], DType::F32).unwrap();
        column_sum(&s, &x, &mut out, false).unwrap();
        assert_eq!(out.to_vec::<f32>(&s).unwrap(), [9.0, 12.0]);
        column_sum(&s, &x, &mut out, true).unwrap();
        assert_eq!(out.to_vec::<f32>(&s).unwrap(), [18.0, 24.0]);
        let mut o16 = Tensor::zeros(&dev, [2], DType::BF16).unwrap();
        column_sum(&s, &x, &mut o16, true).unwrap();
        assert_eq!(
            o16.to_vec::<bf16>(&s).unwrap(),
            [bf16::from_f32(9.0), bf16::from_f32(12.0)]
        );
    }

    #[test]
    fn add_and_bad_operands() {
        let dev = Device::cpu();
        let s = dev.new_stream().unwrap();
        let a = Tensor::from_slice(&dev, &[1.0f32, 2.0], [2]).unwrap();
        let b = Tensor::from_slice(&dev, &[0.5f32, 0.25], [2]).unwrap();
        let mut o = Tensor::poisoned(&dev, [2], DType::F32).unwrap();
        add(&s, &a, &b, &mut o).unwrap();
        assert_eq!(o.to_vec::<f32>(&s).unwrap(), [1.5, 2.25]);
        let mut o3 = Tensor::zeros(&dev, [3], DType::F32).unwrap();
        assert!(matches!(
            add(&s, &a, &b, &mut o3),
            Err(Error::ShapeMismatch { .. })
        ));
        let mut bad = Tensor::zeros(&dev, [2], DType::F16).unwrap();
        assert!(matches!(
            column_sum(&s, &a, &mut bad, false),
            Err(Error::DTypeMismatch { .. })
        ));
        let bb = Tensor::zeros(&dev, [3], DType::F32).unwrap();
        assert!(matches!(
            bias_add(&s, &a, &bb, &mut o),
            Err(Error::ShapeMismatch { .. })
        ));
        let i = Tensor::zeros(&dev, [2], DType::I32).unwrap();
        let mut oi = Tensor::zeros(&dev, [2], DType::I32).unwrap();
        assert!(matches!(
            add(&s, &i, &i, &mut oi),
            Err(Error::UnsupportedDType { .. })
        ));
    }
}
