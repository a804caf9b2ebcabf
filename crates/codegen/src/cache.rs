//! Compiling generated CUDA C to PTX, and the disk cache of compiled PTX.
//!
//! The compiler is pluggable ([`Compiler`]): [`Nvcc`] runs the nvcc of the CUDA toolchain (build
//! time, tests, the command line); the main crate plugs in NVRTC for run-time compilation. The
//! cache ([`PtxCache`]) keys every entry by the source, the compiler's version and its target,
//! so it is shared safely by several compilers and processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why compiling or running failed.
#[derive(Debug)]
pub enum RunError {
    /// The compiler could not be run or rejected the source (its output / log).
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
            RunError::Compile(m) => write!(f, "compile: {m}"),
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
        return Err(RunError::Compile(format!(
            "{}: {}",
            nvcc.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = std::fs::read_to_string(&ptx).map_err(|e| RunError::Compile(e.to_string()));
    let _ = std::fs::remove_dir_all(&dir);
    text
}

/// A compiler of generated CUDA C to PTX, as the [`PtxCache`] uses it.
pub trait Compiler: Send + Sync {
    /// The compiler's identity and version (part of the cache key: a different compiler never
    /// reuses another's PTX). Include anything that changes the output (e.g. options).
    fn version(&self) -> String;

    /// The target the PTX is for (part of the cache key), e.g. `sm_80` or `compute_80`.
    fn arch(&self) -> String;

    /// Compiles `source` (one or more kernels) to PTX text.
    ///
    /// # Errors
    /// [`RunError::Compile`] with the compiler's output when it cannot run or rejects the source.
    fn compile(&self, source: &str) -> Result<String, RunError>;
}

/// nvcc (`-ptx -arch=sm_80 -O3`), as [`compile_ptx`] runs it.
#[derive(Clone, Debug)]
pub struct Nvcc {
    path: PathBuf,
    version: String,
}

impl Nvcc {
    /// The nvcc at `path` (runs `nvcc --version` once for the cache key).
    ///
    /// # Errors
    /// [`RunError::Compile`] when it does not run.
    pub fn new(path: &Path) -> Result<Nvcc, RunError> {
        let out = Command::new(path)
            .arg("--version")
            .output()
            .map_err(|e| RunError::Compile(format!("{}: {e}", path.display())))?;
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .to_string();
        Ok(Nvcc {
            path: path.to_path_buf(),
            version,
        })
    }
}

impl Compiler for Nvcc {
    fn version(&self) -> String {
        format!("nvcc -ptx -O3: {}", self.version)
    }

    fn arch(&self) -> String {
        "sm_80".to_string()
    }

    fn compile(&self, source: &str) -> Result<String, RunError> {
        compile_ptx(&self.path, source)
    }
}

/// A disk cache of compiled PTX: the key is a hash of the kernel source, the compiler's version
/// and its target (e.g. `sm_80`), so a second compile of the same expression by the same
/// compiler never runs the compiler again (in this process or a later one), and a changed
/// expression or compiler does.
pub struct PtxCache {
    dir: PathBuf,
    compiler: Box<dyn Compiler>,
    version: String,
    arch: String,
    compiles: AtomicUsize,
}

impl std::fmt::Debug for PtxCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtxCache")
            .field("dir", &self.dir)
            .field("compiler", &self.version)
            .field("arch", &self.arch)
            .field("compiles", &self.compiles())
            .finish()
    }
}

impl PtxCache {
    /// A cache in `dir` (created if missing) over the nvcc at `compiler`.
    ///
    /// # Errors
    /// [`RunError::Compile`] when the directory cannot be made or the compiler does not run.
    pub fn new(dir: &Path, compiler: &Path) -> Result<PtxCache, RunError> {
        PtxCache::with_compiler(dir, Box::new(Nvcc::new(compiler)?))
    }

    /// A cache in `dir` (created if missing) over any [`Compiler`].
    ///
    /// # Errors
    /// [`RunError::Compile`] when the directory cannot be made.
    pub fn with_compiler(dir: &Path, compiler: Box<dyn Compiler>) -> Result<PtxCache, RunError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| RunError::Compile(format!("{}: {e}", dir.display())))?;
        Ok(PtxCache {
            dir: dir.to_path_buf(),
            version: compiler.version(),
            arch: compiler.arch(),
            compiler,
            compiles: AtomicUsize::new(0),
        })
    }

    /// The directory holding the cached PTX.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The compiler's version, as it enters the key.
    pub fn compiler_version(&self) -> &str {
        &self.version
    }

    /// The cache key of `source`.
    pub fn key(&self, source: &str) -> String {
        let text = format!(
            "{source}\n// compiler: {}\n// arch: {}\n",
            self.version, self.arch
        );
        format!("{:016x}", crate::emit::fnv1a(text.as_bytes()))
    }

    /// The PTX of `source`: from the cache, or compiled (and stored) on a miss.
    ///
    /// # Errors
    /// As [`Compiler::compile`]; a cache file that cannot be written is an error too.
    pub fn ptx(&self, source: &str) -> Result<String, RunError> {
        let path = self.dir.join(format!("{}.ptx", self.key(source)));
        if let Ok(text) = std::fs::read_to_string(&path) {
            return Ok(text);
        }
        let text = self.compiler.compile(source)?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        // Write then rename: a concurrent reader never sees half a file (the temporary name is
        // unique per process and call, so concurrent writers never share one).
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let tmp = path.with_extension(format!(
            "tmp{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                RunError::Compile(format!("{}: {e}", path.display()))
            })?;
        Ok(text)
    }

    /// How many times this cache ran the compiler.
    pub fn compiles(&self) -> usize {
        self.compiles.load(Ordering::Relaxed)
    }
}
