//! `ferrotron bench kernels`: every kernel-backed op at a few shapes on the emulator, with
//! the counters that say whether a kernel is well built — global bytes moved against the ideal
//! (each input read once, each output written once), sectors per load request, shared-memory
//! bank conflicts — and the time the same traffic and FLOPs would take at an H100 SXM's peaks
//! (an estimate, not a measurement). GPU timings (against cuBLASLt and a device-to-device copy)
//! need a GPU: none is measured here.

use std::fmt::Write as _;
use std::time::Instant;

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{self, Epilogue, Gemm, Transpose};
use crate::tensor::Tensor;
use crate::verify::random_vec;
use ptx_emu::{GpuSpec, Metrics};

/// One kernel measurement.
#[derive(Clone, Debug)]
pub struct KernelRow {
    /// The op and variant, e.g. `gemm nt bias_gelu -> bf16`.
    pub name: String,
    /// The shape, e.g. `256x1024` or `m256 n256 k256`.
    pub shape: String,
    /// The emulator's counters over the op's launches.
    pub metrics: Metrics,
    /// Bytes an ideal kernel moves: every input read once, every output written once.
    pub ideal_bytes: u64,
    /// FLOPs of the math (2mnk for a GEMM; 0 for elementwise).
    pub flops: u64,
    /// Seconds the emulator took.
    pub wall_s: f64,
}

impl KernelRow {
    /// Compulsory bytes (each distinct sector of a launch once: what reaches DRAM behind a
    /// cache that never evicts) over the ideal.
    pub fn bytes_ratio(&self) -> f64 {
        self.metrics.compulsory_bytes() as f64 / self.ideal_bytes.max(1) as f64
    }
}

pub(crate) fn tensor(dev: &Device, seed: u64, dims: &[usize], dtype: DType) -> Result<Tensor> {
    let n = dims.iter().product();
    Tensor::from_f64(dev, &random_vec(seed, n, -1.0, 1.0), dims, dtype)
}

pub(crate) fn bytes(t: &Tensor) -> u64 {
    (t.numel() * t.dtype().size_in_bytes()) as u64
}

/// Runs `f` on a fresh emulated device and collects its counters.
fn measure(
    name: String,
    shape: String,
    flops: u64,
    f: impl FnOnce(&Device, &crate::stream::Stream) -> Result<u64>,
) -> Result<KernelRow> {
    let dev = Device::emu(0)?;
    let s = dev.new_stream()?;
    let t0 = Instant::now();
    let ideal_bytes = f(&dev, &s)?;
    s.synchronize()?;
    let wall_s = t0.elapsed().as_secs_f64();
    let metrics = dev
        .emu_metrics()
        .ok_or_else(|| Error::invalid("bench kernels", "device", "not an emulated device"))?;
    Ok(KernelRow {
        name,
        shape,
        metrics,
        ideal_bytes,
        flops,
        wall_s,
    })
}

/// The GEMM layouts the parallel layers use.
pub(crate) fn layout(l: &str) -> (Transpose, Transpose) {
    match l {
        "nt" => (Transpose::N, Transpose::T),
        "tn" => (Transpose::T, Transpose::N),
        _ => (Transpose::N, Transpose::N),
    }
}

fn gemm_row(
    l: &'static str,
    epi: &'static str,
    out: DType,
    (m, n, k): (usize, usize, usize),
) -> Result<KernelRow> {
    let name = format!("gemm {l} {epi} -> {out}");
    let shape = format!("m{m} n{n} k{k}");
    measure(name, shape, 2 * (m * n * k) as u64, |dev, s| {
        let (ta, tb) = layout(l);
        let a_dims = if ta == Transpose::T { [k, m] } else { [m, k] };
        let b_dims = if tb == Transpose::T { [n, k] } else { [k, n] };
        let a = tensor(dev, 1, &a_dims, DType::BF16)?;
        let b = tensor(dev, 2, &b_dims, DType::BF16)?;
        let mut c = if epi == "accum" {
            tensor(dev, 3, &[m, n], out)?
        } else {
            Tensor::poisoned(dev, [m, n], out)?
        };
        let args = Gemm {
            ta,
            tb,
            beta: if epi == "accum" { 1.0 } else { 0.0 },
            ..Gemm::default()
        };
        let mut ideal = bytes(&a) + bytes(&b) + bytes(&c);
        match epi {
            "bias" => {
                let bias = tensor(dev, 4, &[n], out)?;
                ideal += bytes(&bias);
                ops::gemm_epilogue(s, &a, &b, &mut c, &args, Epilogue::Bias(&bias))?;
            }
            "bias_gelu" => {
                let bias = tensor(dev, 4, &[n], out)?;
                let mut pre = Tensor::poisoned(dev, [m, n], out)?;
                ideal += bytes(&bias) + bytes(&pre);
                let e = Epilogue::BiasGelu {
                    bias: &bias,
                    pre: Some(&mut pre),
                };
                ops::gemm_epilogue(s, &a, &b, &mut c, &args, e)?;
            }
            "dgelu" => {
                let pre = tensor(dev, 5, &[m, n], out)?;
                ideal += bytes(&pre);
                ops::gemm_epilogue(s, &a, &b, &mut c, &args, Epilogue::DGelu { pre: &pre })?;
            }
            "accum" => {
                // C is read and written.
                ideal += bytes(&c);
                ops::gemm_epilogue(s, &a, &b, &mut c, &args, Epilogue::None)?;
            }
            _ => ops::gemm_epilogue(s, &a, &b, &mut c, &args, Epilogue::None)?,
        }
        Ok(ideal)
    })
}

fn bias_gelu_rows(rows: usize, cols: usize, dtype: DType) -> Result<Vec<KernelRow>> {
    let shape = format!("{rows}x{cols}");
    let fwd = measure(
        format!("bias_gelu_fwd {dtype}"),
        shape.clone(),
        0,
        |dev, s| {
            let x = tensor(dev, 1, &[rows, cols], dtype)?;
            let b = tensor(dev, 2, &[cols], dtype)?;
            let mut y = Tensor::poisoned(dev, [rows, cols], dtype)?;
            ops::bias_gelu_fwd(s, &x, &b, &mut y)?;
            Ok(bytes(&x) + bytes(&b) + bytes(&y))
        },
    )?;
    let bwd = measure(
        format!("bias_gelu_bwd+dbias {dtype}"),
        shape,
        0,
        |dev, s| {
            let dy = tensor(dev, 3, &[rows, cols], dtype)?;
            let x = tensor(dev, 1, &[rows, cols], dtype)?;
            let b = tensor(dev, 2, &[cols], dtype)?;
            let mut dx = Tensor::poisoned(dev, [rows, cols], dtype)?;
            let mut db = Tensor::poisoned(dev, [cols], dtype)?;
            ops::bias_gelu_bwd(s, &dy, &x, &b, &mut dx, Some(&mut db))?;
            Ok(bytes(&dy) + bytes(&x) + bytes(&b) + bytes(&dx) + bytes(&db))
        },
    )?;
    Ok(vec![fwd, bwd])
}

/// The layer kernels (residual add, layernorm, softmax, cross-entropy, AdamW) at `rows x cols`.
fn layer_rows(rows: usize, cols: usize, dtype: DType) -> Result<Vec<KernelRow>> {
    let shape = format!("{rows}x{cols}");
    let mut v = Vec::new();
    v.push(measure(
        format!("add {dtype}"),
        shape.clone(),
        0,
        |dev, s| {
            let a = tensor(dev, 1, &[rows, cols], dtype)?;
            let b = tensor(dev, 2, &[rows, cols], dtype)?;
            let mut c = Tensor::poisoned(dev, [rows, cols], dtype)?;
            ops::bias::add(s, &a, &b, &mut c)?;
            Ok(bytes(&a) + bytes(&b) + bytes(&c))
        },
    )?);
    v.push(measure(
        format!("layernorm_fwd {dtype}"),
        shape.clone(),
        0,
        |dev, s| {
            let x = tensor(dev, 1, &[rows, cols], dtype)?;
            let g = tensor(dev, 2, &[cols], dtype)?;
            let b = tensor(dev, 3, &[cols], dtype)?;
            let mut y = Tensor::poisoned(dev, [rows, cols], dtype)?;
            let mut mean = Tensor::poisoned(dev, [rows], DType::F32)?;
            let mut rstd = Tensor::poisoned(dev, [rows], DType::F32)?;
            ops::layernorm_fwd(s, &x, &g, &b, 1e-5, &mut y, &mut mean, &mut rstd)?;
            Ok(bytes(&x) + bytes(&g) + bytes(&b) + bytes(&y) + bytes(&mean) + bytes(&rstd))
        },
    )?);
    v.push(measure(
        format!("layernorm_bwd {dtype}"),
        shape.clone(),
        0,
        |dev, s| {
            let x = tensor(dev, 1, &[rows, cols], dtype)?;
            let dy = tensor(dev, 4, &[rows, cols], dtype)?;
            let g = tensor(dev, 2, &[cols], dtype)?;
            // The row statistics, computed on the host (uploads launch no kernel, so only the
            // backward is counted).
            let xv = x.to_f64_vec(s)?;
            let (mut mv, mut rv) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
            for r in 0..rows {
                let row = &xv[r * cols..(r + 1) * cols];
                let m = row.iter().sum::<f64>() / cols as f64;
                let var = row.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / cols as f64;
                mv.push(m);
                rv.push(1.0 / (var + 1e-5).sqrt());
            }
            let mean = Tensor::from_f64(dev, &mv, [rows], DType::F32)?;
            let rstd = Tensor::from_f64(dev, &rv, [rows], DType::F32)?;
            let mut dx = Tensor::poisoned(dev, [rows, cols], dtype)?;
            let mut dg = Tensor::poisoned(dev, [cols], dtype)?;
            let mut db = Tensor::poisoned(dev, [cols], dtype)?;
            ops::layernorm_bwd(s, &dy, &x, &g, &mean, &rstd, &mut dx, &mut dg, &mut db)?;
            Ok(bytes(&dy)
                + bytes(&x)
                + bytes(&g)
                + bytes(&mean)
                + bytes(&rstd)
                + bytes(&dx)
                + bytes(&dg)
                + bytes(&db))
        },
    )?);
    let causal = rows == cols;
    let sm = if causal {
        "softmax_fwd causal"
    } else {
        "softmax_fwd"
    };
    v.push(measure(
        format!("{sm} {dtype}"),
        shape.clone(),
        0,
        |dev, s| {
            let x = tensor(dev, 1, &[rows, cols], dtype)?;
            let mut y = Tensor::poisoned(dev, [rows, cols], dtype)?;
            ops::softmax_fwd(s, &x, &mut y, 0.125, causal)?;
            Ok(bytes(&x) + bytes(&y))
        },
    )?);
    v.push(measure(
        format!("cross_entropy_fwd {dtype}"),
        shape.clone(),
        0,
        |dev, s| {
            let x = tensor(dev, 1, &[rows, cols], dtype)?;
            let t: Vec<i32> = (0..rows).map(|r| ((r * 7919) % cols) as i32).collect();
            let t = Tensor::from_slice(dev, &t, [rows])?;
            let mut l = Tensor::poisoned(dev, [rows], DType::F32)?;
            ops::cross_entropy_fwd(s, &x, &t, &mut l)?;
            Ok(bytes(&x) + bytes(&t) + bytes(&l))
        },
    )?);
    v.push(measure(
        format!("adamw_step {dtype}"),
        shape,
        0,
        |dev, s| {
            let mut p = tensor(dev, 1, &[rows, cols], dtype)?;
            let g = tensor(dev, 2, &[rows, cols], dtype)?;
            let mut m = Tensor::zeros(dev, [rows, cols], DType::F32)?;
            let mut vv = Tensor::zeros(dev, [rows, cols], DType::F32)?;
            // Read and written: the parameter and both moments.
            let ideal = 2 * (bytes(&p) + bytes(&m) + bytes(&vv)) + bytes(&g);
            ops::adamw_step(s, &ops::AdamW::default(), 1, &mut p, &g, &mut m, &mut vv)?;
            Ok(ideal)
        },
    )?);
    Ok(v)
}

/// The overlap kernels (`kernels/overlap/`) through the peer communicator on 2 fresh emulated
/// GPUs, bf16, tile-aligned shapes (so the fused kernels run), counters summed over both
/// devices. Ideal bytes, summed over the ranks:
///
/// - all-gather + GEMM: the GEMM's (the gathered `[m, k]` input read once, `W` `[n, k]` read
///   once, `Y` `[m, n]` written once) plus making the own shard visible to the peer (its
///   `[m/2, k]` read once and written once into the staging buffer);
/// - GEMM + reduce-scatter: the GEMM's (`X` `[m, k]`, `W`) plus each `[m, n]` partial product
///   written once (into its owner's staging) and read once (by the owner's reduction), plus
///   the owner's `[m/2, n]` output written once.
///
/// Flag and peer-table traffic is not in the ideal (it is a few sectors per CTA), but the
/// flag polls are one-sector load requests, which pull these rows' sectors per request down.
fn overlap_rows(quick: bool) -> Result<Vec<KernelRow>> {
    use crate::comm::peer::{self, PeerConfig};
    use crate::comm::Communicator;
    const RANKS: usize = 2;
    let (m_local, n, k) = if quick { (64, 64, 64) } else { (128, 256, 256) };
    let m = RANKS * m_local;
    let b = |elems: usize| (elems * 2) as u64;
    let mut out = Vec::new();
    for fused in ["all_gather_gemm", "gemm_reduce_scatter"] {
        let devices = (0..RANKS)
            .map(Device::emu)
            .collect::<Result<Vec<Device>>>()?;
        let t0 = Instant::now();
        peer::launch(&devices, PeerConfig::default(), |ctx| {
            let (dev, rank) = (&ctx.device, ctx.rank as u64);
            let s = dev.new_stream()?;
            let w = tensor(dev, 10 + rank, &[n, k], DType::BF16)?;
            // Only the overlap call is counted: the inputs' uploads launch no kernel.
            let work = if fused == "all_gather_gemm" {
                let x = tensor(dev, 20 + rank, &[m_local, k], DType::BF16)?;
                let mut y = Tensor::poisoned(dev, [m, n], DType::BF16)?;
                ctx.comm
                    .all_gather_gemm(&s, &x, &w, &mut y, Epilogue::None)?
            } else {
                let x = tensor(dev, 20 + rank, &[m, k], DType::BF16)?;
                let mut y = Tensor::poisoned(dev, [m_local, n], DType::BF16)?;
                ctx.comm.gemm_reduce_scatter(&s, &x, &w, &mut y)?
            };
            work.wait()
        })?;
        let wall_s = t0.elapsed().as_secs_f64();
        let mut metrics = Metrics::default();
        for d in &devices {
            let m = d.emu_metrics().ok_or_else(|| {
                Error::invalid("bench kernels", "device", "not an emulated device")
            })?;
            metrics.merge(&m);
        }
        let per_rank = if fused == "all_gather_gemm" {
            b(m * k) + b(n * k) + b(m * n) + 2 * b(m_local * k)
        } else {
            b(m * k) + b(n * k) + 2 * b(m * n) + b(m_local * n)
        };
        out.push(KernelRow {
            name: format!("{fused} x{RANKS} bf16"),
            shape: format!("m{m} n{n} k{k}"),
            metrics,
            ideal_bytes: RANKS as u64 * per_rank,
            flops: RANKS as u64 * 2 * (m * n * k) as u64,
            wall_s,
        });
    }
    Ok(out)
}

/// Every case of the table; `quick` uses smaller shapes (for tests and CI).
pub fn bench(quick: bool) -> Result<Vec<KernelRow>> {
    let (rows, cols) = if quick { (64, 256) } else { (256, 1024) };
    let g = if quick {
        (128, 128, 64)
    } else {
        (256, 256, 256)
    };
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        out.extend(bias_gelu_rows(rows, cols, dtype)?);
        out.extend(layer_rows(rows, cols, dtype)?);
    }
    for (l, epi, o) in [
        ("nt", "none", DType::BF16),
        ("nt", "bias", DType::BF16),
        ("nt", "bias_gelu", DType::BF16),
        ("nn", "none", DType::BF16),
        ("nn", "dgelu", DType::BF16),
        ("tn", "accum", DType::F32),
    ] {
        out.push(gemm_row(l, epi, o, g)?);
    }
    out.extend(overlap_rows(quick)?);
    Ok(out)
}

/// The table `ferrotron bench kernels` prints.
pub fn table(rows: &[KernelRow]) -> String {
    let h100 = GpuSpec::h100_sxm();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# kernels on the emulator (nvcc 13.0 sm_80 PTX run by ptx-emu). requested = bytes the threads asked for; compulsory = distinct 32-byte sectors per launch (a cache that never evicts); ratio = compulsory / ideal (each input read once, each output written once); H100 us = roofline of the requested sectors at published peaks (an estimate, not a measurement); no GPU timing (no GPU here)"
    );
    let _ = writeln!(
        s,
        "{:<28} {:>16} {:>12} {:>12} {:>12} {:>7} {:>9} {:>9} {:>10} {:>7}",
        "kernel",
        "shape",
        "requested B",
        "compulsory B",
        "ideal B",
        "ratio",
        "sect/req",
        "bank cfl",
        "H100 us",
        "emu s"
    );
    for r in rows {
        let moved = r.metrics.global_bytes_read + r.metrics.global_bytes_written;
        let roof = r.metrics.roofline(&h100);
        let _ = writeln!(
            s,
            "{:<28} {:>16} {:>12} {:>12} {:>12} {:>7.3} {:>9.2} {:>9} {:>10.3} {:>7.2}",
            r.name,
            r.shape,
            moved,
            r.metrics.compulsory_bytes(),
            r.ideal_bytes,
            r.bytes_ratio(),
            r.metrics.sectors_per_load_request(),
            r.metrics.shared_bank_conflicts,
            roof.estimate_s * 1e6,
            r.wall_s
        );
        let _ = r.flops;
    }
    s
}
