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

/// How [`run_on_emu_with`] runs a kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// The emulator's thread-interleaving seed.
    pub seed: u64,
    /// Blocks to launch instead of [`Kernel::launch`]'s (the kernels loop over the rest).
    pub grid: Option<u32>,
    /// Start every input and the output one element past a 256-byte boundary, so no vector
    /// access is aligned and an elementwise kernel takes its scalar path.
    pub misalign: bool,
}

/// The output of one run on the emulator and its counters.
#[derive(Clone, Debug)]
pub struct EmuRun {
    /// The output as f64 ([`Kernel::out_len`] values).
    pub values: Vec<f64>,
    /// The emulator's counters of the launch (bytes, sectors, requests).
    pub metrics: ptx_emu::Metrics,
}

/// Runs `kernel` (from `module`, loaded on device 0 of `mem`) over a `[rows, cols]` output with
/// `inputs[i]` the values of declared input `i` (as for [`crate::eval::evaluate`]), the output
/// poisoned first, launched as [`Kernel::launch`] says; returns the output as f64
/// ([`Kernel::out_len`] values: `rows` for a per-row kernel).
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
    run_on_emu_with(
        module,
        mem,
        kernel,
        rows,
        cols,
        inputs,
        &RunOptions::default(),
    )
    .map(|r| r.values)
}

/// [`run_on_emu`] with options, returning the emulator's counters too.
///
/// # Errors
/// As [`run_on_emu`]; [`RunError::Inputs`] also for a shape too large for the launch.
pub fn run_on_emu_with(
    module: &LoadedModule,
    mem: &Memory,
    kernel: &Kernel,
    rows: usize,
    cols: usize,
    inputs: &[&[f64]],
    options: &RunOptions,
) -> Result<EmuRun, RunError> {
    if inputs.len() != kernel.inputs.len() {
        return Err(RunError::Inputs(format!(
            "{} given for {} inputs",
            inputs.len(),
            kernel.inputs.len()
        )));
    }
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| RunError::Inputs(format!("{rows} x {cols} elements overflow")))?;
    // One element past a 256-byte boundary (allocations are 256-byte aligned), or none.
    let place = |bytes: &[u8], elem: usize| -> Result<u64, RunError> {
        let off = if options.misalign { elem } else { 0 };
        let a = mem.alloc(0, (bytes.len() + off) as u64)?;
        mem.write(a + off as u64, bytes)?;
        Ok(a + off as u64)
    };
    let (mut ptrs, mut scalars) = (Vec::new(), Vec::new());
    for ((name, dtype, bcast), v) in kernel.inputs.iter().zip(inputs) {
        let need = match bcast {
            Bcast::Full => n,
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
            ptrs.push(place(&bytes_of(v, *dtype), dtype.size())?);
        }
    }
    let out_n = kernel.out_len(rows, cols);
    let out_bytes = (out_n * kernel.out.size()) as u64;
    let off = if options.misalign {
        kernel.out.size() as u64
    } else {
        0
    };
    let out = mem.alloc(0, out_bytes + off)? + off;
    mem.poison(out, out_bytes)?;
    let params = kernel.params(&ptrs, out, rows as u64, cols as u64, &scalars);
    let (grid, block, shared) = kernel.launch(rows, cols);
    let cfg = LaunchConfig {
        grid: [options.grid.unwrap_or(grid).max(1), 1, 1],
        block: [block, 1, 1],
        dynamic_shared: shared,
        seed: options.seed,
        ..LaunchConfig::default()
    };
    let metrics = module.launch(&kernel.name, &params, &cfg)?;
    let mut raw = vec![0u8; out_bytes as usize];
    mem.read_bytes(out, &mut raw)?;
    let values = match kernel.out {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        Dtype::Bf16 => raw
            .chunks_exact(2)
            .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64())
            .collect(),
    };
    Ok(EmuRun { values, metrics })
}

/// The tolerance of one output element: `2 r |want| + 16 depth u scale`, with `r` the output
/// type's unit roundoff, `u` the unit roundoff of the narrowest type the expression rounds
/// through (bf16 `2^-9` if it casts, else f32 `2^-24`), `scale` the element's largest
/// intermediate magnitude and `depth` the expression depth (both from the evaluator): rounding
/// errors are relative to the operands, and CUDA's f32 functions are within a few ulp. For a
/// reduction, `depth` counts the roundings of the kernel's summation tree (about `log2(cols)`)
/// and `scale` the sum of the terms' magnitudes, which bounds every partial sum
/// ([`crate::eval::Evaluation`]): a row sum is within `steps u sum|terms|` (to first order).
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
