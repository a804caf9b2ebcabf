//! `ferrotron bench kernels --gpu`: the kernel-backed ops of [`super::kernels`] timed on a real
//! GPU, each against a baseline measured in the same run on the same stream, the same way:
//!
//! - GEMMs (at tensor-parallel shard shapes of a hidden-4096, TP-8 Megatron layer) against
//!   cuBLASLt ([`crate::backend::cuda::cublaslt`]) at the same shape, layout, output dtype and
//!   beta: time, TFLOP/s and the ratio of throughputs, plus a check that cuBLASLt and our plain
//!   GEMM compute the same product (so the baseline is the same math);
//! - elementwise and layer ops against a device-to-device copy (`cuMemcpyDtoDAsync`) that moves
//!   the op's ideal bytes (a copy of B bytes reads B and writes B, so it copies half of them):
//!   time, GB/s of the ideal bytes and the ratio of bandwidths.
//!
//! Timing: CUDA events recorded on the stream around each iteration (after warm-up, and behind
//! a large device copy that keeps the GPU busy while the host enqueues the iterations, so host
//! launch overhead is not what is measured); the median iteration is reported. Without a GPU,
//! [`bench_gpu`] returns the typed error of [`Device::cuda_with`] ([`Error::NoCudaDriver`] or
//! [`Error::NoCudaDevice`]); without `libcublasLt`, the one of
//! [`crate::backend::cuda::cublaslt::probe`].

use std::fmt::Write as _;
use std::sync::Arc;

use super::kernels::{bytes, layout, tensor};
use crate::backend::cuda::cublaslt::CublasLt;
use crate::backend::cuda::driver_error;
use crate::device::{Device, DeviceConfig};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{self, Epilogue, Gemm};
use crate::stream::{Stream, StreamImpl};
use crate::tensor::Tensor;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream};

/// Untimed iterations before each measurement.
pub const WARMUP: usize = 3;
/// Timed iterations per measurement (the median is reported).
pub const ITERS: usize = 20;

/// What a row's time is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// cuBLASLt's GEMM at the same shape, layout, output dtype and beta (no fused epilogue).
    CublasLt,
    /// A device-to-device copy moving the same number of bytes as the op's ideal traffic.
    DtoDCopy,
}

impl Baseline {
    /// The name printed in the table.
    pub fn name(self) -> &'static str {
        match self {
            Baseline::CublasLt => "cuBLASLt",
            Baseline::DtoDCopy => "dtod copy",
        }
    }
}

/// Whether cuBLASLt and our GEMM computed the same product.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmCheck {
    /// The largest `|ours - cuBLASLt| / (|cuBLASLt| + rms(cuBLASLt))` over the output
    /// (infinite when either has a non-finite element).
    pub max_err: f64,
    /// The tolerance: 2^-6 for a bf16 output (one bf16 rounding each, plus f32 summation order),
    /// 1e-4 for an f32 output.
    pub tol: f64,
    /// `max_err <= tol`.
    pub pass: bool,
}

/// One GPU measurement: an op of ours and its baseline, timed in the same run.
#[derive(Clone, Debug)]
pub struct GpuRow {
    /// The GPU's name (as the driver reports it).
    pub device: String,
    /// The op and variant, e.g. `gemm nt bias_gelu -> bf16` (the names of
    /// [`super::kernels::bench`]).
    pub name: String,
    /// The shape, e.g. `m4096 n1536 k4096` or `4096x4096`.
    pub shape: String,
    /// Where the shape comes from, e.g. `QKV fwd` (empty for the elementwise rows).
    pub note: String,
    /// Our median seconds per iteration.
    pub time_s: f64,
    /// FLOPs per iteration (2mnk for a GEMM; 0 for elementwise).
    pub flops: u64,
    /// Bytes an ideal kernel moves: every input read once, every output written once.
    pub ideal_bytes: u64,
    /// The baseline.
    pub baseline: Baseline,
    /// The baseline's median seconds per iteration.
    pub baseline_s: f64,
    /// GEMM rows: cuBLASLt against our plain GEMM of the same layout and output dtype.
    pub check: Option<GemmCheck>,
    /// Whether the GPU may have waited for the host during our timing or the baseline's (the
    /// work queued ahead of the timed iterations ran out before the host had enqueued them all),
    /// so that a time may include launch overhead: marked `*` in the table.
    pub host_bound: bool,
}

impl GpuRow {
    /// Our TFLOP/s (0 for elementwise rows).
    pub fn tflops(&self) -> f64 {
        self.flops as f64 / self.time_s / 1e12
    }

    /// Our GB/s of the ideal bytes.
    pub fn gbps(&self) -> f64 {
        self.ideal_bytes as f64 / self.time_s / 1e9
    }

    /// The baseline's rate in the row's unit: TFLOP/s for cuBLASLt, GB/s (bytes read plus
    /// written) for the copy.
    pub fn baseline_rate(&self) -> f64 {
        match self.baseline {
            Baseline::CublasLt => self.flops as f64 / self.baseline_s / 1e12,
            Baseline::DtoDCopy => self.ideal_bytes as f64 / self.baseline_s / 1e9,
        }
    }

    /// Our throughput over the baseline's (both do the same FLOPs / move the same bytes, so
    /// this is `baseline_s / time_s`): above 1, ours is faster.
    pub fn ratio(&self) -> f64 {
        self.baseline_s / self.time_s
    }
}

/// The timing harness: one stream, its raw CUDA stream, and two device buffers used by the
/// copy baseline and by the queue filler.
struct Harness {
    stream: Stream,
    cs: Arc<CudaStream>,
    src: Tensor,
    dst: Tensor,
    /// Bytes of `src` and `dst`.
    capacity: usize,
    /// Bytes the queue filler copies, [`FILLER_COPIES`] times, before each timed batch.
    filler: usize,
}

/// How many copies of the filler buffer precede each timed batch.
const FILLER_COPIES: usize = 4;

/// One measurement: the median seconds per iteration, and whether the GPU may have waited for
/// the host (the queue filler was done before the host had enqueued every timed iteration).
#[derive(Clone, Copy, Debug)]
struct Timing {
    median_s: f64,
    host_bound: bool,
}

impl Harness {
    fn new(dev: &Device, capacity: usize, filler: usize) -> Result<Harness> {
        let stream = dev.new_named_stream("bench-gpu")?;
        let cs = match stream.imp() {
            StreamImpl::Cuda(s) => s.clone(),
            StreamImpl::Cpu(_) => {
                return Err(Error::Unsupported {
                    op: "bench kernels --gpu",
                    backend: dev.label().to_string(),
                })
            }
        };
        let words = capacity.div_ceil(4);
        let src = Tensor::zeros(dev, [words], DType::F32)?;
        let dst = Tensor::zeros(dev, [words], DType::F32)?;
        Ok(Harness {
            stream,
            cs,
            src,
            dst,
            capacity: words * 4,
            filler: filler.min(words * 4),
        })
    }

    /// Enqueues a device-to-device copy of `n` bytes from `src` to `dst`.
    fn copy(&self, n: usize) -> Result<()> {
        if n > self.capacity {
            return Err(Error::invalid(
                "bench kernels --gpu",
                "copy bytes",
                format!("{n} exceeds the copy buffers' {} bytes", self.capacity),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        crate::ops::launch::prepare_kernel(
            &self.stream,
            "memcpy_dtod",
            &[("src", &self.src)],
            &[("dst", &self.dst)],
        )?;
        let src = self.src.buffer().cuda().ptr(&self.cs);
        let dst = self.dst.buffer().cuda().ptr(&self.cs);
        self.cs
            .context()
            .bind_to_thread()
            .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
        // SAFETY: `src` and `dst` are distinct live allocations of `self.capacity >= n` bytes on
        // this stream's device (checked above), kept alive until the stream is past the copy
        // (`CudaMem`'s Drop orders the free after every user stream); the context is current.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(dst, src, n, self.cs.cu_stream())
                .map_err(|e| driver_error("cuMemcpyDtoDAsync", e))
        }
    }

    fn event(&self) -> Result<CudaEvent> {
        self.cs
            .context()
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| driver_error("cuEventCreate", e))
    }

    /// The median seconds of one call of `f` (which enqueues work on `self.stream`): [`WARMUP`]
    /// untimed calls, then [`ITERS`] calls each between two events, behind the queue filler.
    fn time(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Timing> {
        for _ in 0..WARMUP {
            f()?;
        }
        self.stream.synchronize()?;
        let events = (0..=ITERS)
            .map(|_| self.event())
            .collect::<Result<Vec<_>>>()?;
        // Keeps the GPU busy while the host enqueues the timed iterations.
        for _ in 0..FILLER_COPIES {
            self.copy(self.filler)?;
        }
        events[0]
            .record(&self.cs)
            .map_err(|e| driver_error("cuEventRecord", e))?;
        for ev in &events[1..] {
            f()?;
            ev.record(&self.cs)
                .map_err(|e| driver_error("cuEventRecord", e))?;
        }
        // If the first event has completed already, the GPU may have idled between iterations
        // waiting for the host: the times may include host overhead.
        let host_bound = events[0]
            .try_is_complete()
            .map_err(|e| driver_error("cuEventQuery", e))?;
        // Surfaces an asynchronous failure of the op before its timings are read.
        self.stream.synchronize()?;
        let mut ms = events
            .windows(2)
            .map(|w| {
                w[0].elapsed_ms(&w[1])
                    .map(f64::from)
                    .map_err(|e| driver_error("cuEventElapsedTime", e))
            })
            .collect::<Result<Vec<f64>>>()?;
        ms.sort_by(f64::total_cmp);
        let mid = ms.len() / 2;
        let median = if ms.len() % 2 == 1 {
            ms[mid]
        } else {
            0.5 * (ms[mid - 1] + ms[mid])
        };
        Ok(Timing {
            median_s: median * 1e-3,
            host_bound,
        })
    }
}

/// `max |x - y| / (|y| + rms(y))`, infinite when an element of either is not finite.
pub fn gemm_error(ours: &[f64], reference: &[f64]) -> f64 {
    if ours.len() != reference.len() || reference.is_empty() {
        return f64::INFINITY;
    }
    let rms = (reference.iter().map(|v| v * v).sum::<f64>() / reference.len() as f64).sqrt();
    let mut worst = 0.0f64;
    for (&x, &y) in ours.iter().zip(reference) {
        if !x.is_finite() || !y.is_finite() {
            return f64::INFINITY;
        }
        let e = (x - y).abs() / (y.abs() + rms).max(f64::MIN_POSITIVE);
        worst = worst.max(e);
    }
    worst
}

/// One GEMM case: layout, epilogue, output dtype, full-size `(m, n, k)`, and where it occurs.
type GemmCase = (
    &'static str,
    &'static str,
    DType,
    (usize, usize, usize),
    &'static str,
);

/// The GEMM cases of [`super::kernels::bench`] at the shard shapes of a Megatron layer with
/// hidden size 4096, tensor-parallel size 8 and 4096 tokens (`quick` divides every dimension
/// by 8).
const GEMM_CASES: [GemmCase; 6] = [
    // Column-parallel QKV: [tokens, h] x W_qkv^T, W_qkv shard [3h/tp, h].
    ("nt", "none", DType::BF16, (4096, 1536, 4096), "QKV fwd"),
    // Row-parallel attention projection: k = h/tp.
    (
        "nt",
        "bias",
        DType::BF16,
        (4096, 4096, 512),
        "attn proj fwd",
    ),
    // Column-parallel fc1 with bias + GeLU: n = 4h/tp.
    (
        "nt",
        "bias_gelu",
        DType::BF16,
        (4096, 2048, 4096),
        "fc1 fwd",
    ),
    // fc1 data gradient: dX = dY W1, W1 shard [4h/tp, h].
    ("nn", "none", DType::BF16, (4096, 4096, 2048), "fc1 dgrad"),
    // fc2 data gradient fused with the GeLU backward: dH = (dY W2) * gelu'(pre).
    ("nn", "dgelu", DType::BF16, (4096, 2048, 4096), "fc2 dgrad"),
    // fc1 weight gradient accumulated into the f32 main gradient: dW1 += dY^T X.
    ("tn", "accum", DType::F32, (2048, 4096, 4096), "fc1 wgrad"),
];

fn gemm_row(
    h: &Harness,
    lt: &CublasLt,
    device: &str,
    case: &GemmCase,
    quick: bool,
) -> Result<GpuRow> {
    let &(l, epi, out, full, note) = case;
    let (m, n, k) = if quick {
        (full.0 / 8, full.1 / 8, full.2 / 8)
    } else {
        full
    };
    let dev = h.stream.device().clone();
    let s = &h.stream;
    let (ta, tb) = layout(l);
    let a_dims = if ta == ops::Transpose::T {
        [k, m]
    } else {
        [m, k]
    };
    let b_dims = if tb == ops::Transpose::T {
        [n, k]
    } else {
        [k, n]
    };
    let a = tensor(&dev, 1, &a_dims, DType::BF16)?;
    let b = tensor(&dev, 2, &b_dims, DType::BF16)?;
    let accum = epi == "accum";
    let c_init = |seed: u64| -> Result<Tensor> {
        if accum {
            tensor(&dev, seed, &[m, n], out)
        } else {
            Tensor::poisoned(&dev, [m, n], out)
        }
    };
    let args = Gemm {
        ta,
        tb,
        beta: if accum { 1.0 } else { 0.0 },
        ..Gemm::default()
    };
    let mut c = c_init(3)?;
    let mut ideal = bytes(&a) + bytes(&b) + bytes(&c);
    let bias = tensor(&dev, 4, &[n], out)?;
    let mut pre = match epi {
        "dgelu" => tensor(&dev, 5, &[m, n], out)?,
        _ => Tensor::poisoned(&dev, [m, n], out)?,
    };
    ideal += match epi {
        "bias" => bytes(&bias),
        "bias_gelu" => bytes(&bias) + bytes(&pre),
        "dgelu" => bytes(&pre),
        "accum" => bytes(&c), // C is read and written.
        _ => 0,
    };
    let ours = h.time(&mut || match epi {
        "bias" => ops::gemm_epilogue(s, &a, &b, &mut c, &args, Epilogue::Bias(&bias)),
        "bias_gelu" => {
            let e = Epilogue::BiasGelu {
                bias: &bias,
                pre: Some(&mut pre),
            };
            ops::gemm_epilogue(s, &a, &b, &mut c, &args, e)
        }
        "dgelu" => ops::gemm_epilogue(s, &a, &b, &mut c, &args, Epilogue::DGelu { pre: &pre }),
        _ => ops::gemm_epilogue(s, &a, &b, &mut c, &args, Epilogue::None),
    })?;
    let mut c_lt = c_init(3)?;
    let theirs_t = h.time(&mut || lt.gemm(s, &a, &b, &mut c_lt, &args))?;

    // The same product from both, from the same initial C: our plain GEMM (the epilogue, if
    // any, is checked against its reference by `ferrotron check`) against cuBLASLt.
    let mut mine = c_init(3)?;
    ops::gemm_epilogue(s, &a, &b, &mut mine, &args, Epilogue::None)?;
    let mut theirs = c_init(3)?;
    lt.gemm(s, &a, &b, &mut theirs, &args)?;
    let max_err = gemm_error(&mine.to_f64_vec(s)?, &theirs.to_f64_vec(s)?);
    let tol = if out == DType::BF16 { 1.0 / 64.0 } else { 1e-4 };
    Ok(GpuRow {
        device: device.to_string(),
        name: format!("gemm {l} {epi} -> {out}"),
        shape: format!("m{m} n{n} k{k}"),
        note: note.to_string(),
        time_s: ours.median_s,
        flops: 2 * (m * n * k) as u64,
        ideal_bytes: ideal,
        baseline: Baseline::CublasLt,
        baseline_s: theirs_t.median_s,
        check: Some(GemmCheck {
            max_err,
            tol,
            pass: max_err <= tol,
        }),
        host_bound: ours.host_bound || theirs_t.host_bound,
    })
}

/// Times `f` and the copy of the same bytes; makes the row.
fn copy_row(
    h: &Harness,
    device: &str,
    name: String,
    shape: &str,
    ideal_bytes: u64,
    f: &mut dyn FnMut() -> Result<()>,
) -> Result<GpuRow> {
    let ours = h.time(f)?;
    let half = (ideal_bytes / 2) as usize;
    let copy = h.time(&mut || h.copy(half))?;
    Ok(GpuRow {
        device: device.to_string(),
        name,
        shape: shape.to_string(),
        note: String::new(),
        time_s: ours.median_s,
        flops: 0,
        ideal_bytes: 2 * half as u64,
        baseline: Baseline::DtoDCopy,
        baseline_s: copy.median_s,
        check: None,
        host_bound: ours.host_bound || copy.host_bound,
    })
}

/// The elementwise and layer ops of [`super::kernels::bench`] at `rows x cols` in `dtype`.
fn elementwise_rows(
    h: &Harness,
    device: &str,
    rows: usize,
    cols: usize,
    dtype: DType,
) -> Result<Vec<GpuRow>> {
    let dev = h.stream.device().clone();
    let s = &h.stream;
    let shape = format!("{rows}x{cols}");
    let mut v = Vec::new();
    {
        let x = tensor(&dev, 1, &[rows, cols], dtype)?;
        let b = tensor(&dev, 2, &[cols], dtype)?;
        let mut y = Tensor::poisoned(&dev, [rows, cols], dtype)?;
        let ideal = bytes(&x) + bytes(&b) + bytes(&y);
        v.push(copy_row(
            h,
            device,
            format!("bias_gelu_fwd {dtype}"),
            &shape,
            ideal,
            &mut || ops::bias_gelu_fwd(s, &x, &b, &mut y),
        )?);
        let dy = tensor(&dev, 3, &[rows, cols], dtype)?;
        let mut dx = Tensor::poisoned(&dev, [rows, cols], dtype)?;
        let mut db = Tensor::poisoned(&dev, [cols], dtype)?;
        let ideal = bytes(&dy) + bytes(&x) + bytes(&b) + bytes(&dx) + bytes(&db);
        v.push(copy_row(
            h,
            device,
            format!("bias_gelu_bwd+dbias {dtype}"),
            &shape,
            ideal,
            &mut || ops::bias_gelu_bwd(s, &dy, &x, &b, &mut dx, Some(&mut db)),
        )?);
    }
    {
        let a = tensor(&dev, 1, &[rows, cols], dtype)?;
        let b = tensor(&dev, 2, &[rows, cols], dtype)?;
        let mut c = Tensor::poisoned(&dev, [rows, cols], dtype)?;
        let ideal = bytes(&a) + bytes(&b) + bytes(&c);
        v.push(copy_row(
            h,
            device,
            format!("add {dtype}"),
            &shape,
            ideal,
            &mut || ops::bias::add(s, &a, &b, &mut c),
        )?);
    }
    {
        let x = tensor(&dev, 1, &[rows, cols], dtype)?;
        let g = tensor(&dev, 2, &[cols], dtype)?;
        let b = tensor(&dev, 3, &[cols], dtype)?;
        let mut y = Tensor::poisoned(&dev, [rows, cols], dtype)?;
        let mut mean = Tensor::poisoned(&dev, [rows], DType::F32)?;
        let mut rstd = Tensor::poisoned(&dev, [rows], DType::F32)?;
        let ideal = bytes(&x) + bytes(&g) + bytes(&b) + bytes(&y) + bytes(&mean) + bytes(&rstd);
        v.push(copy_row(
            h,
            device,
            format!("layernorm_fwd {dtype}"),
            &shape,
            ideal,
            &mut || ops::layernorm_fwd(s, &x, &g, &b, 1e-5, &mut y, &mut mean, &mut rstd),
        )?);
        // The backward reads the statistics the forward just wrote.
        let dy = tensor(&dev, 4, &[rows, cols], dtype)?;
        let mut dx = Tensor::poisoned(&dev, [rows, cols], dtype)?;
        let mut dg = Tensor::poisoned(&dev, [cols], dtype)?;
        let mut db = Tensor::poisoned(&dev, [cols], dtype)?;
        let ideal = bytes(&dy)
            + bytes(&x)
            + bytes(&g)
            + bytes(&mean)
            + bytes(&rstd)
            + bytes(&dx)
            + bytes(&dg)
            + bytes(&db);
        v.push(copy_row(
            h,
            device,
            format!("layernorm_bwd {dtype}"),
            &shape,
            ideal,
            &mut || ops::layernorm_bwd(s, &dy, &x, &g, &mean, &rstd, &mut dx, &mut dg, &mut db),
        )?);
    }
    {
        let causal = rows == cols;
        let sm = if causal {
            "softmax_fwd causal"
        } else {
            "softmax_fwd"
        };
        let x = tensor(&dev, 1, &[rows, cols], dtype)?;
        let mut y = Tensor::poisoned(&dev, [rows, cols], dtype)?;
        let ideal = bytes(&x) + bytes(&y);
        v.push(copy_row(
            h,
            device,
            format!("{sm} {dtype}"),
            &shape,
            ideal,
            &mut || ops::softmax_fwd(s, &x, &mut y, 0.125, causal),
        )?);
    }
    {
        let x = tensor(&dev, 1, &[rows, cols], dtype)?;
        let t: Vec<i32> = (0..rows).map(|r| ((r * 7919) % cols) as i32).collect();
        let t = Tensor::from_slice(&dev, &t, [rows])?;
        let mut l = Tensor::poisoned(&dev, [rows], DType::F32)?;
        let ideal = bytes(&x) + bytes(&t) + bytes(&l);
        v.push(copy_row(
            h,
            device,
            format!("cross_entropy_fwd {dtype}"),
            &shape,
            ideal,
            &mut || ops::cross_entropy_fwd(s, &x, &t, &mut l),
        )?);
    }
    {
        let mut p = tensor(&dev, 1, &[rows, cols], dtype)?;
        let g = tensor(&dev, 2, &[rows, cols], dtype)?;
        let mut m = Tensor::zeros(&dev, [rows, cols], DType::F32)?;
        let mut vv = Tensor::zeros(&dev, [rows, cols], DType::F32)?;
        // Read and written: the parameter and both moments.
        let ideal = 2 * (bytes(&p) + bytes(&m) + bytes(&vv)) + bytes(&g);
        let cfg = ops::AdamW::default();
        v.push(copy_row(
            h,
            device,
            format!("adamw_step {dtype}"),
            &shape,
            ideal,
            &mut || ops::adamw_step(s, &cfg, 1, &mut p, &g, &mut m, &mut vv),
        )?);
    }
    Ok(v)
}

/// Times every GEMM case of [`super::kernels::bench`] against cuBLASLt and every elementwise /
/// layer op against a device-to-device copy, on CUDA device 0. `quick` uses smaller shapes (for
/// tests): GEMMs at 1/8 of each dimension, elementwise at 256 x 1024 instead of 4096 x 4096.
///
/// # Errors
/// Without a GPU, the typed error of [`Device::cuda_with`] ([`Error::NoCudaDriver`],
/// [`Error::NoCudaDevice`]); without `libcublasLt`, [`Error::Cuda`] from
/// [`crate::backend::cuda::cublaslt::probe`]; any op's or driver call's error.
pub fn bench_gpu(quick: bool) -> Result<Vec<GpuRow>> {
    // Checked mode records every access on the host: a correctness tool that would only add
    // host overhead here.
    let dev = Device::cuda_with(
        0,
        DeviceConfig {
            checked: false,
            ..DeviceConfig::default()
        },
    )?;
    crate::backend::cuda::cublaslt::probe()?;
    let (rows, cols) = if quick { (256, 1024) } else { (4096, 4096) };
    // The largest copy baseline: adamw_step in f32 moves 28 bytes per element (half copied).
    // The queue filler: FILLER_COPIES copies of 128 MiB (quick) or 512 MiB, about 0.35 ms or
    // 1.4 ms of an H100's bandwidth: more than the host needs to enqueue the timed iterations.
    let filler: usize = if quick { 128 << 20 } else { 512 << 20 };
    let capacity = (14 * rows * cols).max(filler);
    let h = Harness::new(&dev, capacity, filler)?;
    let device =
        h.cs.context()
            .name()
            .unwrap_or_else(|_| dev.label().to_string());
    let lt = CublasLt::new(&h.stream)?;
    let mut out = Vec::new();
    for case in &GEMM_CASES {
        out.push(gemm_row(&h, &lt, &device, case, quick)?);
    }
    for dtype in [DType::F32, DType::BF16] {
        out.extend(elementwise_rows(&h, &device, rows, cols, dtype)?);
    }
    h.stream.synchronize()?;
    Ok(out)
}

/// The table `ferrotron bench kernels --gpu` prints (no date: record one where the figures are
/// kept).
pub fn table_gpu(rows: &[GpuRow]) -> String {
    let mut s = String::new();
    let device = rows.first().map_or("(no rows)", |r| r.device.as_str());
    let marked = "*";
    let _ = writeln!(
        s,
        "# kernels on {device}: CUDA events, median of {ITERS} iterations after {WARMUP} warm-up, each batch behind {FILLER_COPIES} large device copies that keep the GPU busy while the host enqueues it ({marked} = the GPU may have waited for the host: the time may include launch overhead). GEMM: bf16 operands, f32 accumulation; baseline cuBLASLt at the same shape, layout, output dtype and beta (no fused epilogue: on bias / GeLU rows it does less work); check = cuBLASLt vs our plain GEMM, max |d| / (|ref| + rms). Elementwise: GB/s of the ideal bytes (each input read once, each output written once); baseline a device-to-device copy moving the same bytes. ratio = our throughput / the baseline's (> 1: ours faster)"
    );
    let _ = writeln!(
        s,
        "{:<28} {:>18} {:>10} {:>9} {:>9} {:>10} {:>10} {:>11} {:>7} {:>16}  case",
        "kernel",
        "shape",
        "us",
        "TFLOP/s",
        "GB/s",
        "baseline",
        "base us",
        "base rate",
        "ratio",
        "check"
    );
    for r in rows {
        let tflops = if r.flops > 0 {
            format!("{:.1}", r.tflops())
        } else {
            "-".to_string()
        };
        let unit = match r.baseline {
            Baseline::CublasLt => "TF/s",
            Baseline::DtoDCopy => "GB/s",
        };
        let check = match &r.check {
            Some(c) => format!("{} {:.1e}", if c.pass { "ok" } else { "FAIL" }, c.max_err),
            None => "-".to_string(),
        };
        let _ = writeln!(
            s,
            "{:<28} {:>18} {:>10} {:>9} {:>9.1} {:>10} {:>10.2} {:>6.1} {unit} {:>7.3} {:>16}  {}",
            r.name,
            r.shape,
            format!(
                "{:.2}{}",
                r.time_s * 1e6,
                if r.host_bound { marked } else { "" }
            ),
            tflops,
            r.gbps(),
            r.baseline.name(),
            r.baseline_s * 1e6,
            r.baseline_rate(),
            r.ratio(),
            check,
            r.note
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_bench_gpu_is_a_typed_error() {
        let Some(why) = crate::backend::cuda::unavailable_reason() else {
            eprintln!("SKIP without_a_gpu_bench_gpu_is_a_typed_error: a GPU is present");
            return;
        };
        let err = bench_gpu(true).expect_err("no GPU, yet bench_gpu succeeded");
        assert!(
            matches!(err, Error::NoCudaDriver { .. } | Error::NoCudaDevice { .. }),
            "{err} ({why})"
        );
    }

    #[test]
    fn gemm_error_is_relative_to_the_output_scale() {
        assert_eq!(gemm_error(&[1.0, -2.0], &[1.0, -2.0]), 0.0);
        let e = gemm_error(&[1.01, 0.0], &[1.0, 0.0]);
        assert!(e > 0.0 && e < 0.01, "{e}");
        assert_eq!(gemm_error(&[f64::NAN], &[1.0]), f64::INFINITY);
        assert_eq!(gemm_error(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    }

    #[test]
    fn rates_and_ratios() {
        let r = GpuRow {
            device: "test".into(),
            name: "gemm nt none -> bf16".into(),
            shape: "m1 n1 k1".into(),
            note: String::new(),
            time_s: 2e-3,
            flops: 2_000_000_000_000,
            ideal_bytes: 4_000_000_000,
            baseline: Baseline::CublasLt,
            baseline_s: 1e-3,
            check: Some(GemmCheck {
                max_err: 0.001,
                tol: 1.0 / 64.0,
                pass: true,
            }),
            host_bound: false,
        };
        assert!((r.tflops() - 1000.0).abs() < 1e-9);
        assert!((r.baseline_rate() - 2000.0).abs() < 1e-9);
        assert!((r.gbps() - 2000.0).abs() < 1e-9);
        assert!((r.ratio() - 0.5).abs() < 1e-12);
        let copy = GpuRow {
            baseline: Baseline::DtoDCopy,
            flops: 0,
            check: None,
            host_bound: true,
            ..r.clone()
        };
        assert!((copy.baseline_rate() - 4000.0).abs() < 1e-9);
        let t = table_gpu(&[r, copy]);
        eprintln!("{t}");
        assert!(t.contains("# kernels on test"), "{t}");
        assert!(t.contains("cuBLASLt") && t.contains("dtod copy"), "{t}");
        assert!(t.contains("ok 1.0e-3"), "{t}");
        assert_eq!(
            t.matches('*').count(),
            2,
            "one marked row (and the legend): {t}"
        );
    }
}
