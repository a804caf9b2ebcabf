//! A small safe wrapper over cuBLASLt (`libcublasLt`, loaded at run time by `cudarc`): the bf16
//! GEMM that `ferrotron bench kernels --gpu` measures the crate's own GEMM kernels against.
//!
//! ferrotron's tensors are row-major and cuBLAS is column-major. A row-major `[r, c]` buffer is
//! the column-major `[c, r]` matrix (its transpose) with leading dimension `c`, so the row-major
//! product `C = op(A) op(B)` is computed as the column-major `C^T = op(B)^T op(A)^T`: cuBLASLt's
//! first operand is our `B` (transposed iff `tb` is [`Transpose::T`]), its second our `A`
//! (transposed iff `ta` is), and its `n x m` output, leading dimension `n`, is our `[m, n]` `C`.
//!
//! A machine without `libcublasLt` gets [`Error::Cuda`] from [`probe`] (and so from
//! [`CublasLt::new`]), never a panic.

use super::driver_error;
use crate::device::BackendKind;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{Gemm, Transpose};
use crate::stream::{Stream, StreamImpl};
use crate::tensor::Tensor;
use cudarc::cublaslt::result::{self as lt, CublasError};
use cudarc::cublaslt::sys;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::CudaStream;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// The op name used in errors.
const OP: &str = "cublaslt_gemm";

/// Maps a cuBLASLt status to [`Error::Cuda`], naming the call.
fn lt_error(call: &str, e: CublasError) -> Error {
    Error::Cuda {
        call: call.to_string(),
        message: format!("cuBLASLt returned {e}"),
    }
}

/// Checks that `libcublasLt` can be loaded (the CUDA driver is probed separately, by
/// [`super::probe`]), without touching a GPU.
///
/// # Errors
/// [`Error::Cuda`] with the call `dlopen(libcublasLt)` when the dynamic loader finds none of the
/// names `cudarc` tries (`libcublasLt.so`, `libcublasLt.so.13`, `libcublasLt.so.12`, ...).
pub fn probe() -> Result<()> {
    // SAFETY: only tries to dlopen the cuBLASLt library by its usual names; loading it runs no
    // cuBLASLt call, and a failed attempt has no effect.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::Cuda {
            call: "dlopen(libcublasLt)".to_string(),
            message: "libcublasLt not found: the dynamic loader found no libcublasLt.so / \
                      libcublasLt.so.13 / libcublasLt.so.12 (install the CUDA toolkit's or \
                      PyPI's cuBLAS, e.g. nvidia-cublas, and put its lib directory on \
                      LD_LIBRARY_PATH)"
                .to_string(),
        })
    }
}

/// The cuBLASLt data type of a GEMM operand.
fn data_type(d: DType) -> Result<sys::cudaDataType> {
    match d {
        DType::BF16 => Ok(sys::cudaDataType::CUDA_R_16BF),
        DType::F32 => Ok(sys::cudaDataType::CUDA_R_32F),
        other => Err(Error::UnsupportedDType {
            op: OP,
            what: "c (bf16 or f32)".into(),
            dtype: other,
        }),
    }
}

/// The raw CUDA stream of a ferrotron stream, or [`Error::Unsupported`] off CUDA.
fn cuda_stream(stream: &Stream) -> Result<&Arc<CudaStream>> {
    match stream.imp() {
        StreamImpl::Cuda(s) => Ok(s),
        StreamImpl::Cpu(_) => Err(Error::Unsupported {
            op: OP,
            backend: stream.device().label().to_string(),
        }),
    }
}

/// What a cached plan is for: layouts, sizes and the output type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    c_bf16: bool,
    /// The alignment in bytes (a power of two, at most 256) of our A's, B's and C's addresses.
    align_a: u32,
    align_b: u32,
    align_c: u32,
}

/// The largest power of two, at most 256, that divides the device address `ptr`.
fn alignment(ptr: u64) -> u32 {
    1u32 << ptr.trailing_zeros().min(8)
}

/// A matmul preference descriptor, destroyed on drop.
struct Pref(sys::cublasLtMatmulPreference_t);

impl Pref {
    fn new() -> Result<Pref> {
        lt::create_matmul_pref()
            .map(Pref)
            .map_err(|e| lt_error("cublasLtMatmulPreferenceCreate", e))
    }

    /// Sets `attr` to `value` (whose type must be the attribute's: `u32` or `u64`).
    fn set<T: Copy>(
        &self,
        attr: sys::cublasLtMatmulPreferenceAttributes_t,
        value: T,
    ) -> Result<()> {
        // SAFETY: `self.0` is a live preference; the buffer is `value`, which outlives the call,
        // and its exact size is passed (cuBLASLt checks it against the attribute's type).
        unsafe {
            lt::set_matmul_pref_attribute(
                self.0,
                attr,
                (&value as *const T).cast::<c_void>(),
                std::mem::size_of::<T>(),
            )
        }
        .map_err(|e| {
            lt_error(
                &format!("cublasLtMatmulPreferenceSetAttribute({attr:?})"),
                e,
            )
        })
    }
}

impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by `cublasLtMatmulPreferenceCreate` in `new`, destroyed only here.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

/// The cuBLASLt descriptors and the chosen algorithm of one GEMM problem.
struct LtPlan {
    desc: sys::cublasLtMatmulDesc_t,
    /// Layout of cuBLASLt's first operand (our `B`).
    x: sys::cublasLtMatrixLayout_t,
    /// Layout of cuBLASLt's second operand (our `A`).
    y: sys::cublasLtMatrixLayout_t,
    /// Layout of the output (and of C, which is the same buffer).
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
    workspace: usize,
}

impl LtPlan {
    /// Creates the descriptors for `key` and asks cuBLASLt's heuristic for its best algorithm
    /// within `max_workspace` bytes.
    fn new(handle: sys::cublasLtHandle_t, key: PlanKey, max_workspace: usize) -> Result<LtPlan> {
        let c_type = if key.c_bf16 {
            sys::cudaDataType::CUDA_R_16BF
        } else {
            sys::cudaDataType::CUDA_R_32F
        };
        let (m, n, k) = (key.m as u64, key.n as u64, key.k as u64);
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(|e| lt_error("cublasLtMatmulDescCreate", e))?;
        // From here on every created descriptor is owned by `plan`, whose Drop destroys the
        // non-null ones, so an early return leaks nothing.
        let mut plan = LtPlan {
            desc,
            x: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            // SAFETY: `cublasLtMatmulAlgo_t` is a plain C struct of integers (`data: [u64; 8]`);
            // all-zero bytes are a valid value, overwritten by the heuristic's result below.
            algo: unsafe { std::mem::zeroed() },
            workspace: 0,
        };
        // cublasOperation_t: 0 = CUBLAS_OP_N, 1 = CUBLAS_OP_T (an int32 attribute).
        let trans_x: i32 = key.tb as i32;
        let trans_y: i32 = key.ta as i32;
        for (attr, v) in [
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &trans_x,
            ),
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                &trans_y,
            ),
        ] {
            // SAFETY: `plan.desc` is the live descriptor created above; the buffer is an i32 that
            // outlives the call, and its size is passed.
            unsafe {
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    attr,
                    (v as *const i32).cast::<c_void>(),
                    std::mem::size_of::<i32>(),
                )
            }
            .map_err(|e| lt_error("cublasLtMatmulDescSetAttribute(TRANS)", e))?;
        }
        // Column-major views of the row-major buffers (module docs): a stored row-major
        // `[r, c]` is column-major `c x r` with leading dimension `c`.
        // Our B is stored [k, n] (N) or [n, k] (T).
        let (x_rows, x_cols) = if key.tb { (k, n) } else { (n, k) };
        // Our A is stored [m, k] (N) or [k, m] (T).
        let (y_rows, y_cols) = if key.ta { (m, k) } else { (k, m) };
        let bf16 = sys::cudaDataType::CUDA_R_16BF;
        plan.x = lt::create_matrix_layout(bf16, x_rows, x_cols, x_rows as i64)
            .map_err(|e| lt_error("cublasLtMatrixLayoutCreate(b)", e))?;
        plan.y = lt::create_matrix_layout(bf16, y_rows, y_cols, y_rows as i64)
            .map_err(|e| lt_error("cublasLtMatrixLayoutCreate(a)", e))?;
        plan.d = lt::create_matrix_layout(c_type, n, m, n as i64)
            .map_err(|e| lt_error("cublasLtMatrixLayoutCreate(c)", e))?;
        let pref = Pref::new()?;
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        pref.set(
            P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            max_workspace as u64,
        )?;
        // Split-K partial sums only in f32 (the compute type), never in the bf16 output type,
        // so that cuBLASLt rounds once, as our kernels do.
        pref.set(
            P::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
            sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32,
        )?;
        // cuBLASLt's A is our B, its B our A (module docs); C and D are our C.
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_b)?;
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a)?;
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c)?;
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_c)?;
        // SAFETY: every descriptor passed is live (created above and destroyed only by the
        // Drops of `plan` and `pref`), and C and D share `plan.d`.
        let h = unsafe {
            lt::get_matmul_algo_heuristic(handle, plan.desc, plan.x, plan.y, plan.d, plan.d, pref.0)
        }
        .map_err(|e| {
            lt_error(
                &format!(
                    "cublasLtMatmulAlgoGetHeuristic(m{} n{} k{} {}{} -> {})",
                    key.m,
                    key.n,
                    key.k,
                    if key.ta { "t" } else { "n" },
                    if key.tb { "t" } else { "n" },
                    if key.c_bf16 { "bf16" } else { "f32" }
                ),
                e,
            )
        })?;
        plan.algo = h.algo;
        plan.workspace = h.workspaceSize.min(max_workspace);
        Ok(plan)
    }
}

impl Drop for LtPlan {
    fn drop(&mut self) {
        // SAFETY: each non-null handle was created by cuBLASLt for this plan, is destroyed only
        // here, and no enqueued matmul needs it afterwards (cuBLASLt reads descriptors on the
        // host when `cublasLtMatmul` is called).
        unsafe {
            for l in [self.x, self.y, self.d] {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            if !self.desc.is_null() {
                let _ = lt::destroy_matmul_desc(self.desc);
            }
        }
    }
}

/// A cuBLASLt handle for one CUDA device, with its workspace and a cache of per-problem plans
/// (descriptors and the heuristic's algorithm).
pub struct CublasLt {
    handle: sys::cublasLtHandle_t,
    /// Device memory cuBLASLt may use as scratch (32 MiB on Hopper and newer, 4 MiB before, as
    /// NVIDIA recommends).
    workspace: Tensor,
    workspace_bytes: usize,
    plans: Mutex<HashMap<PlanKey, LtPlan>>,
}

impl std::fmt::Debug for CublasLt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CublasLt({}, workspace {} B)",
            self.workspace.device().label(),
            self.workspace_bytes
        )
    }
}

impl CublasLt {
    /// Loads cuBLASLt and creates a handle for the device of `stream` (a CUDA stream).
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a stream that is not on a CUDA device; [`Error::Cuda`] when
    /// `libcublasLt` cannot be loaded ([`probe`]) or a driver / cuBLASLt call fails.
    pub fn new(stream: &Stream) -> Result<CublasLt> {
        let s = cuda_stream(stream)?;
        probe()?;
        let ctx = s.context();
        ctx.bind_to_thread()
            .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
        let major = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            .map_err(|e| driver_error("cuDeviceGetAttribute(COMPUTE_CAPABILITY_MAJOR)", e))?;
        let workspace_bytes: usize = if major >= 9 { 32 << 20 } else { 4 << 20 };
        let workspace = Tensor::zeros(stream.device(), [workspace_bytes / 4], DType::F32)?;
        let handle = lt::create_handle().map_err(|e| lt_error("cublasLtCreate", e))?;
        Ok(CublasLt {
            handle,
            workspace,
            workspace_bytes,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// Enqueues `C = alpha * op(A) * op(B) + beta * C` on `stream` with cuBLASLt, for row-major
    /// tensors exactly as [`crate::ops::gemm`] takes them: `a` is stored `[m, k]` (`args.ta` =
    /// N) or `[k, m]` (T), `b` `[k, n]` (`args.tb` = N) or `[n, k]` (T), `c` is `[m, n]`. `a`
    /// and `b` are bf16; `c` is bf16 or f32; products are accumulated in f32 (compute type
    /// `CUBLAS_COMPUTE_32F`) and rounded once to `c`'s dtype. With `beta == 0`, `C` is not read.
    ///
    /// # Errors
    /// [`Error::RankMismatch`], [`Error::ShapeMismatch`], [`Error::ZeroDim`],
    /// [`Error::DTypeMismatch`] or [`Error::UnsupportedDType`] for bad operands;
    /// [`Error::DeviceMismatch`] when a tensor is not on the stream's device, or the stream is
    /// not on this handle's device; [`Error::Aliasing`] when `c` is also `a` or `b`;
    /// [`Error::Cuda`] when cuBLASLt has no algorithm for the problem or the call fails.
    pub fn gemm(
        &self,
        stream: &Stream,
        a: &Tensor,
        b: &Tensor,
        c: &mut Tensor,
        args: &Gemm,
    ) -> Result<()> {
        let (m, n, k) = validate(a, b, c, args)?;
        let s = cuda_stream(stream)?;
        stream.same_device(OP, "cublasLt handle", self.workspace.device())?;
        if stream.device().kind() != BackendKind::Cuda {
            return Err(Error::Unsupported {
                op: OP,
                backend: stream.device().label().to_string(),
            });
        }
        let (reads, writes) = accesses(a, b, c, &self.workspace);
        // `prepare_kernel` checks devices and aliasing, and records the accesses in checked mode.
        crate::ops::launch::prepare_kernel(stream, OP, &reads, &writes)?;
        s.context()
            .bind_to_thread()
            .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
        let a_ptr = a.buffer().cuda().ptr(s);
        let b_ptr = b.buffer().cuda().ptr(s);
        let c_ptr = c.buffer().cuda().ptr(s);
        let ws_ptr = self.workspace.buffer().cuda().ptr(s);
        let key = PlanKey {
            ta: args.ta == Transpose::T,
            tb: args.tb == Transpose::T,
            m,
            n,
            k,
            c_bf16: c.dtype() == DType::BF16,
            align_a: alignment(a_ptr),
            align_b: alignment(b_ptr),
            align_c: alignment(c_ptr),
        };
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        let plan = match plans.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(LtPlan::new(self.handle, key, self.workspace_bytes)?),
        };
        let (alpha, beta) = (args.alpha, args.beta);
        // SAFETY: the handle and the plan's descriptors are live (owned by `self`); the
        // descriptors describe exactly the validated shapes of `a`, `b` and `c`, whose device
        // buffers are live, on this stream's device, and kept alive until the stream is past
        // this call (`CudaMem`'s Drop orders the free after every user stream, and `ptr` noted
        // this stream as a user); `c` does not alias `a` or `b` (checked above); `alpha` and
        // `beta` are host f32 scalars (the default pointer mode, scale type 32F) read during the
        // call; the workspace holds at least `plan.workspace` bytes; the context is current.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                (&alpha as *const f32).cast::<c_void>(),
                (&beta as *const f32).cast::<c_void>(),
                b_ptr as usize as *const c_void,
                plan.x,
                a_ptr as usize as *const c_void,
                plan.y,
                c_ptr as usize as *const c_void,
                plan.d,
                c_ptr as usize as *mut c_void,
                plan.d,
                &plan.algo,
                ws_ptr as usize as *mut c_void,
                plan.workspace,
                s.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| lt_error(&format!("cublasLtMatmul(m{m} n{n} k{k})"), e))
    }
}

impl Drop for CublasLt {
    fn drop(&mut self) {
        // Descriptors first, then the handle.
        self.plans.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if !self.handle.is_null() {
            // SAFETY: the handle was created by `cublasLtCreate` in `new` and is destroyed only
            // here; matmuls already enqueued do not need the handle to stay alive.
            let _ = unsafe { lt::destroy_handle(self.handle) };
        }
    }
}

/// Named tensors as `prepare_kernel` takes them.
type Accesses<'t> = [(&'static str, &'t Tensor); 2];

/// The buffers a cuBLASLt GEMM reads and writes. `c` is listed once, as written, even when
/// `beta != 0` reads it (a write covers the read in checked mode, and listing it twice would be
/// reported as aliasing). The workspace is written by every call, so that calls on two streams
/// without an event between them are caught in checked mode.
fn accesses<'t>(
    a: &'t Tensor,
    b: &'t Tensor,
    c: &'t Tensor,
    workspace: &'t Tensor,
) -> (Accesses<'t>, Accesses<'t>) {
    ([("a", a), ("b", b)], [("c", c), ("workspace", workspace)])
}

/// Checks the operands of [`CublasLt::gemm`] and returns `(m, n, k)`.
fn validate(a: &Tensor, b: &Tensor, c: &Tensor, args: &Gemm) -> Result<(usize, usize, usize)> {
    for (what, t) in [("a", a), ("b", b), ("c", c)] {
        if t.dims().len() != 2 {
            return Err(Error::RankMismatch {
                op: OP,
                what: what.into(),
                expected: 2,
                got: t.dims().to_vec(),
            });
        }
        if t.numel() == 0 {
            return Err(Error::ZeroDim {
                op: OP,
                what: what.into(),
                shape: t.dims().to_vec(),
            });
        }
    }
    for (what, t) in [("a", a), ("b", b)] {
        if t.dtype() != DType::BF16 {
            return Err(Error::DTypeMismatch {
                op: OP,
                what: what.into(),
                expected: DType::BF16,
                got: t.dtype(),
            });
        }
    }
    data_type(c.dtype())?;
    for (what, v) in [("alpha", args.alpha), ("beta", args.beta)] {
        if !v.is_finite() {
            return Err(Error::invalid(OP, what, format!("{v} is not finite")));
        }
    }
    let (m, k) = match args.ta {
        Transpose::N => (a.dims()[0], a.dims()[1]),
        Transpose::T => (a.dims()[1], a.dims()[0]),
    };
    let (kb, n) = match args.tb {
        Transpose::N => (b.dims()[0], b.dims()[1]),
        Transpose::T => (b.dims()[1], b.dims()[0]),
    };
    if kb != k {
        let want = match args.tb {
            Transpose::N => vec![k, n],
            Transpose::T => vec![n, k],
        };
        return Err(Error::ShapeMismatch {
            op: OP,
            what: "b (its k must match a's)".into(),
            expected: want,
            got: b.dims().to_vec(),
        });
    }
    if c.dims() != [m, n] {
        return Err(Error::ShapeMismatch {
            op: OP,
            what: "c".into(),
            expected: vec![m, n],
            got: c.dims().to_vec(),
        });
    }
    // cuBLASLt takes sizes and leading dimensions as 64-bit; int32 limits apply inside some
    // kernels, so refuse what no heuristic would accept anyway.
    if m.max(n).max(k) > i32::MAX as usize {
        return Err(Error::invalid(
            OP,
            "shape",
            format!("m{m} n{n} k{k}: a dimension exceeds i32::MAX"),
        ));
    }
    Ok((m, n, k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;

    #[test]
    fn probe_never_panics() {
        // Either outcome is fine here; without the library it must be the typed error.
        if let Err(e) = probe() {
            assert!(e.to_string().contains("libcublasLt not found"), "{e}");
        }
    }

    #[test]
    fn off_cuda_is_a_typed_error() {
        let dev = Device::cpu();
        let s = dev.new_stream().unwrap();
        let err = CublasLt::new(&s).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    }

    #[test]
    fn accumulating_accesses_pass_the_aliasing_check() {
        // beta = 1 reads and writes c: that must not look like aliasing to `prepare_kernel`.
        let dev = Device::cpu();
        let s = dev.new_stream().unwrap();
        let t = |dims: &[usize], d: DType| Tensor::zeros(&dev, dims.to_vec(), d).unwrap();
        let (a, b, c, ws) = (
            t(&[8, 4], DType::BF16),
            t(&[8, 6], DType::BF16),
            t(&[4, 6], DType::F32),
            t(&[16], DType::F32),
        );
        let (reads, writes) = accesses(&a, &b, &c, &ws);
        crate::ops::launch::prepare_kernel(&s, OP, &reads, &writes).unwrap();
        // ... while c = a is caught.
        let (reads, writes) = accesses(&a, &b, &a, &ws);
        let err = crate::ops::launch::prepare_kernel(&s, OP, &reads, &writes).unwrap_err();
        assert!(matches!(err, Error::Aliasing { .. }), "{err}");
    }

    #[test]
    fn operands_are_validated_before_any_cuda_call() {
        let dev = Device::cpu();
        let t = |dims: &[usize], d: DType| Tensor::zeros(&dev, dims.to_vec(), d).unwrap();
        let args = Gemm {
            ta: Transpose::N,
            tb: Transpose::T,
            ..Gemm::default()
        };
        // NT: a [m, k], b [n, k], c [m, n].
        let ok = validate(
            &t(&[4, 8], DType::BF16),
            &t(&[6, 8], DType::BF16),
            &t(&[4, 6], DType::BF16),
            &args,
        );
        assert_eq!(ok.unwrap(), (4, 6, 8));
        let bad_k = validate(
            &t(&[4, 8], DType::BF16),
            &t(&[6, 7], DType::BF16),
            &t(&[4, 6], DType::BF16),
            &args,
        );
        assert!(
            matches!(bad_k, Err(Error::ShapeMismatch { .. })),
            "{bad_k:?}"
        );
        let bad_dtype = validate(
            &t(&[4, 8], DType::F32),
            &t(&[6, 8], DType::BF16),
            &t(&[4, 6], DType::BF16),
            &args,
        );
        assert!(matches!(bad_dtype, Err(Error::DTypeMismatch { .. })));
        let bad_c = validate(
            &t(&[4, 8], DType::BF16),
            &t(&[6, 8], DType::BF16),
            &t(&[4, 6], DType::F16),
            &args,
        );
        assert!(matches!(bad_c, Err(Error::UnsupportedDType { .. })));
        // TN: a stored [k, m], b [k, n].
        let tn = Gemm {
            ta: Transpose::T,
            tb: Transpose::N,
            ..Gemm::default()
        };
        let ok = validate(
            &t(&[8, 4], DType::BF16),
            &t(&[8, 6], DType::BF16),
            &t(&[4, 6], DType::F32),
            &tn,
        );
        assert_eq!(ok.unwrap(), (4, 6, 8));
    }
}
