//! Running generated kernels without a GPU: compile the CUDA C to sm_80 PTX with nvcc, run the
//! PTX on ptx-emu, and compare with the evaluator under [`tolerance`].

use std::path::Path;
use std::process::Command;

use crate::emit::Kernel;
use crate::expr::{Bcast, Dtype};
use ptx_emu::{LaunchConfig, LoadedModule, Memory};

/// Why compiling or running failed.
#[derive(Debug)]
pub enum RunError {
    /// nvcc could not be run or rejected the source (its output).
    Compile(String),
    /// The emulator rejected the PTX or the launch.
    Emu(ptx_emu::EmuError),
    /// The inputs do not match the kernel.
    Inputs(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Compile(m) => write!(f, "nvcc: {m}"),
            RunError::Emu(e) => write!(f, "ptx-emu: {e}"),
            RunError::Inputs(m) => write!(f, "inputs: {m}"),
        }
    }
}

impl std::error::Error for RunError {}

impl From<ptx_emu::EmuError> for RunError {
    fn from(e: ptx_emu::EmuError) -> Self {
        RunError::Emu(e)
    }
}

/// Compiles `source` (one or more generated kernels) to sm_80 PTX with `nvcc` (in a temporary
/// directory).
///
/// # Errors
/// [`RunError::Compile`] with nvcc's output.
pub fn compile_ptx(nvcc: &Path, source: &str) -> Result<String, RunError> {
    let dir = std::env::temp_dir().join(format!(
        "ferrotron-codegen-{}-{:016x}",
        std::process::id(),
        crate::emit::fnv1a(source.as_bytes())
    ));
    std::fs::create_dir_all(&dir).map_err(|e| RunError::Compile(e.to_string()))?;
    let (cu, ptx) = (dir.join("fused.cu"), dir.join("fused.ptx"));
    std::fs::write(&cu, source).map_err(|e| RunError::Compile(e.to_string()))?;
    let out = Command::new(nvcc)
        .args(["-ptx", "-arch=sm_80", "-O3", "-o"])
        .arg(&ptx)
        .arg(&cu)
        .output()
        .map_err(|e| RunError::Compile(format!("{}: {e}", nvcc.display())))?;
    if !out.status.success() {
        return Err(RunError::Compile(
            String::from_utf8_lossy(&out.stderr).to_string(),
        ));
    }
    let text = std::fs::read_to_string(&ptx).map_err(|e| RunError::Compile(e.to_string()));
    let _ = std::fs::remove_dir_all(&dir);
    text
}

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

/// A disk cache of compiled PTX: the key is a hash of the kernel source, the compiler's version
/// and the target (`sm_80`), so a second compile of the same expression by the same compiler
/// never runs the compiler again (in this process or a later one), and a changed expression or
/// compiler does.
#[derive(Debug)]
pub struct PtxCache {
    dir: std::path::PathBuf,
    compiler: std::path::PathBuf,
    version: String,
    compiles: std::sync::atomic::AtomicUsize,
}

impl PtxCache {
    /// A cache in `dir` (created if missing) over the nvcc at `compiler`.
    ///
    /// # Errors
    /// [`RunError::Compile`] when the directory cannot be made or the compiler does not run.
    pub fn new(dir: &Path, compiler: &Path) -> Result<PtxCache, RunError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| RunError::Compile(format!("{}: {e}", dir.display())))?;
        let out = Command::new(compiler)
            .arg("--version")
            .output()
            .map_err(|e| RunError::Compile(format!("{}: {e}", compiler.display())))?;
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .to_string();
        Ok(PtxCache {
            dir: dir.to_path_buf(),
            compiler: compiler.to_path_buf(),
            version,
            compiles: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The cache key of `source`.
    pub fn key(&self, source: &str) -> String {
        let text = format!("{source}\n// compiler: {}\n// arch: sm_80\n", self.version);
        format!("{:016x}", crate::emit::fnv1a(text.as_bytes()))
    }

    /// The PTX of `source`: from the cache, or compiled (and stored) on a miss.
    ///
    /// # Errors
    /// As [`compile_ptx`]; a cache file that cannot be written is an error too.
    pub fn ptx(&self, source: &str) -> Result<String, RunError> {
        let path = self.dir.join(format!("{}.ptx", self.key(source)));
        if let Ok(text) = std::fs::read_to_string(&path) {
            return Ok(text);
        }
        let text = compile_ptx(&self.compiler, source)?;
        self.compiles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Write then rename: a concurrent reader never sees half a file.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| RunError::Compile(format!("{}: {e}", path.display())))?;
        Ok(text)
    }

    /// How many times this cache ran the compiler.
    pub fn compiles(&self) -> usize {
        self.compiles.load(std::sync::atomic::Ordering::Relaxed)
    }
}
