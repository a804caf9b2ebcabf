//! Compiling generated CUDA C to sm_80 PTX with nvcc, and the disk cache of compiled PTX.

use std::path::Path;
use std::process::Command;

/// Why compiling or running failed.
#[derive(Debug)]
pub enum RunError {
    /// nvcc could not be run or rejected the source (its output).
    Compile(String),
    /// The emulator rejected the PTX or the launch.
    #[cfg(feature = "emu")]
    Emu(ptx_emu::EmuError),
    /// The inputs do not match the kernel.
    Inputs(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Compile(m) => write!(f, "nvcc: {m}"),
            #[cfg(feature = "emu")]
            RunError::Emu(e) => write!(f, "ptx-emu: {e}"),
            RunError::Inputs(m) => write!(f, "inputs: {m}"),
        }
    }
}

impl std::error::Error for RunError {}

#[cfg(feature = "emu")]
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
