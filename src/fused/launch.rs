//! Launching a generated kernel ([`codegen::emit::Kernel`]) on a CUDA or emulated stream: the one
//! path for the shipped variants build.rs compiled into the image [`SHIPPED_MODULE`] and for
//! kernels compiled at run time by NVRTC ([`super::Fused`]).

use crate::backend::emu::LaunchShape;
use crate::error::{Error, Result};
use crate::stream::{Stream, StreamImpl};
use crate::tensor::Tensor;
use codegen::emit::Kernel;
use codegen::expr::Bcast;
use std::sync::OnceLock;

/// The embedded image of the code generator's shipped fused kernels (`codegen::variants::fused`,
/// compiled by build.rs from `OUT_DIR/generated/fused.cu`).
pub(crate) const SHIPPED_MODULE: &str = "generated/fused";

/// Where a generated kernel's code comes from.
pub(crate) enum Code<'a> {
    /// An embedded image (by name).
    Image(&'static str),
    /// PTX text, loaded once per device under `key`.
    Ptx {
        /// The module key.
        key: &'a str,
        /// The PTX.
        ptx: &'a str,
    },
}

/// The generated kernel of the shipped fused variant `name` (e.g. `bias_gelu_bwd_bf16`),
/// emitted once per process: its entry point's name (a hash of the expression, the name build.rs
/// compiled), its parameter order and its launch shape.
///
/// # Errors
/// [`Error::KernelImageMissing`] when `codegen::variants::fused` has no such variant.
pub(crate) fn shipped(name: &str) -> Result<&'static Kernel> {
    static KERNELS: OnceLock<Vec<(&'static str, Kernel)>> = OnceLock::new();
    KERNELS
        .get_or_init(|| {
            codegen::variants::fused()
                .iter()
                .map(|v| (v.name, v.kernel()))
                .collect()
        })
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, k)| k)
        .ok_or_else(|| Error::KernelImageMissing {
            name: format!("{SHIPPED_MODULE} (no variant {name})"),
        })
}

/// `k`'s tensor inputs in its parameter order, picked by name from `named`.
///
/// # Errors
/// [`Error::InvalidArgument`] when `named` lacks one of them.
pub(crate) fn in_order<'t>(
    op: &'static str,
    k: &Kernel,
    named: &[(&str, &'t Tensor)],
) -> Result<Vec<&'t Tensor>> {
    k.inputs
        .iter()
        .filter(|(_, _, b)| *b != Bcast::Scalar)
        .map(|(n, _, _)| {
            named
                .iter()
                .find(|(m, _)| m == n)
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    Error::invalid(
                        op,
                        n.clone(),
                        format!("the generated kernel {} reads it; not given", k.name),
                    )
                })
        })
        .collect()
}

/// Enqueues `k` from `code` on `stream` (CUDA or emulated device) over a `[rows, cols]`
/// iteration space: `inputs` are its tensor inputs in parameter order, `scalars` its scalar
/// inputs. The caller has validated the operands (shapes, dtypes, devices) and recorded the
/// access (`prepare_kernel`); the tensors stay alive until the kernel has run.
///
/// # Errors
/// [`Error::Unsupported`] on a plain CPU stream; loading or launch errors.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch(
    stream: &Stream,
    op: &'static str,
    code: Code<'_>,
    k: &Kernel,
    inputs: &[&Tensor],
    out: &Tensor,
    rows: usize,
    cols: usize,
    scalars: &[f32],
) -> Result<()> {
    let (grid, block, shared) = k.launch(rows, cols);
    let (rows, cols) = (rows as u64, cols as u64);
    match stream.imp() {
        StreamImpl::Cpu(_) => {
            let dev = stream
                .device()
                .emu_state()
                .ok_or_else(|| crate::ops::unsupported(op, stream))?
                .clone();
            let module = match code {
                Code::Image(name) => name.to_string(),
                Code::Ptx { key, ptx } => {
                    dev.load_ptx(key, ptx)?;
                    key.to_string()
                }
            };
            let ptrs: Vec<u64> = inputs.iter().map(|t| t.buffer().emu().addr()).collect();
            let params = k.params(&ptrs, out.buffer().emu().addr(), rows, cols, scalars);
            let keep: Vec<_> = inputs
                .iter()
                .chain([&out])
                .map(|t| t.buffer().clone())
                .collect();
            let name = k.name.clone();
            let shape = LaunchShape {
                grid: [grid, 1, 1],
                block: [block, 1, 1],
                dynamic_shared: shared,
            };
            stream.push_host(op, move || {
                let _keep = keep;
                dev.launch_with(&module, &name, &params, shape).map(|_| ())
            });
            Ok(())
        }
        StreamImpl::Cuda(s) => {
            let dev = stream
                .device()
                .cuda_state()
                .ok_or_else(|| crate::ops::unsupported(op, stream))?;
            let func = match code {
                Code::Image(name) => dev.function(name, &k.name)?,
                Code::Ptx { key, ptx } => dev.function_from_ptx(key, ptx, &k.name)?,
            };
            let ptrs: Vec<u64> = inputs.iter().map(|t| t.buffer().cuda().ptr(s)).collect();
            let out_ptr = out.buffer().cuda().ptr(s);
            let cfg = cudarc::driver::LaunchConfig {
                grid_dim: (grid, 1, 1),
                block_dim: (block, 1, 1),
                shared_mem_bytes: shared,
            };
            use cudarc::driver::PushKernelArg;
            let mut b = s.launch_builder(&func);
            for p in &ptrs {
                b.arg(p);
            }
            b.arg(&out_ptr);
            b.arg(&rows);
            b.arg(&cols);
            for v in scalars {
                b.arg(v);
            }
            // SAFETY: the arguments match the generated kernel's parameter list exactly (see
            // `codegen::emit`: one pointer per non-scalar input in declaration order, the
            // output pointer, rows and cols as u64, one f32 per scalar input); every pointer
            // addresses a live buffer the caller validated, kept alive past the kernel by
            // `CudaMem`'s Drop (which orders the free after every user stream).
            unsafe { b.launch(cfg) }.map_err(|e| {
                crate::backend::cuda::driver_error(&format!("cuLaunchKernel({})", k.name), e)
            })?;
            Ok(())
        }
    }
}
