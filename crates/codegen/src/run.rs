//! Running generated kernels without a GPU: run the PTX (from [`crate::cache`]) on ptx-emu and
//! compare with the evaluator under [`tolerance`].

pub use crate::cache::{compile_ptx, PtxCache, RunError};
use crate::emit::Kernel;
use crate::expr::{Bcast, Dtype};
use ptx_emu::{LaunchConfig, LoadedModule, Memory};

fn bytes_of(v: &[f64], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
        Dtype::Bf16 => v
            .iter()
            .flat_map(|x| half::bf16::from_f64(*x).to_bits().to_le_bytes())
            .collect(),
    }
}

/// Runs `kernel` (from `module`, loaded on device 0 of `mem`) over a `[rows, cols]` output with
/// `inputs[i]` the values of declared input `i` (as for [`crate::eval::evaluate`]), the output
/// poisoned first; returns the output as f64.
///
/// # Errors
/// [`RunError::Inputs`] for inputs that do not match, [`RunError::Emu`] from the emulator
/// (including its sanitizer checks).
pub fn run_on_emu(
    module: &LoadedModule,
    mem: &Memory,
    kernel: &Kernel,
    rows: usize,
    cols: usize,
    inputs: &[&[f64]],
) -> Result<Vec<f64>, RunError> {
    if inputs.len() != kernel.inputs.len() {
        return Err(RunError::Inputs(format!(
            "{} given for {} inputs",
            inputs.len(),
            kernel.inputs.len()
        )));
    }
    let (mut ptrs, mut scalars) = (Vec::new(), Vec::new());
    for ((name, dtype, bcast), v) in kernel.inputs.iter().zip(inputs) {
        let need = match bcast {
            Bcast::Full => rows * cols,
            Bcast::Row => cols,
            Bcast::Col => rows,
            Bcast::Scalar => 1,
        };
        if v.len() != need {
            return Err(RunError::Inputs(format!(
                "{name} has {} values, needs {need}",
                v.len()
            )));
        }
        if *bcast == Bcast::Scalar {
            scalars.push(v[0] as f32);
        } else {
            let b = bytes_of(v, *dtype);
            let a = mem.alloc(0, b.len() as u64)?;
            mem.write(a, &b)?;
            ptrs.push(a);
        }
    }
    let n = rows * cols;
    let out_bytes = (n * kernel.out.size()) as u64;
    let out = mem.alloc(0, out_bytes)?;
    mem.poison(out, out_bytes)?;
    let params = kernel.params(&ptrs, out, rows as u64, cols as u64, &scalars);
    let blocks = n.div_ceil(128).clamp(1, 8) as u32;
    module.launch(&kernel.name, &params, &LaunchConfig::linear(blocks, 128))?;
    let mut raw = vec![0u8; out_bytes as usize];
    mem.read_bytes(out, &mut raw)?;
    Ok(match kernel.out {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        Dtype::Bf16 => raw
            .chunks_exact(2)
            .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64())
            .collect(),
    })
}

/// The tolerance of one output element: `2 r |want| + 16 depth u scale`, with `r` the output
/// type's unit roundoff, `u` the unit roundoff of the narrowest type the expression rounds
/// through (bf16 `2^-9` if it casts, else f32 `2^-24`), `scale` the element's largest
/// intermediate magnitude and `depth` the expression depth (both from the evaluator): rounding
/// errors are relative to the operands, and CUDA's f32 functions are within a few ulp.
pub fn tolerance(out: Dtype, rounds_bf16: bool, depth: usize, scale: f64, want: f64) -> f64 {
    let r = match out {
        Dtype::F32 => 2f64.powi(-24),
        Dtype::Bf16 => 2f64.powi(-8),
    };
    let u = if rounds_bf16 {
        2f64.powi(-9)
    } else {
        2f64.powi(-24)
    };
    2.0 * r * want.abs() + 16.0 * depth.max(1) as f64 * u * scale.max(1e-30)
}
