//! Finding and loading NVRTC, the run-time CUDA C compiler, and compiling generated kernels to
//! PTX with it. No GPU is needed: NVRTC is a plain library (PyPI wheel
//! `nvidia-cuda-nvrtc==13.0.88`, which `scripts/install-cuda-toolchain.sh` installs, the same
//! 13.0 line as the build's nvcc, so ptx-emu and 13.0 drivers accept its PTX).
//!
//! Where the library is looked for, in order ([`Nvrtc::from_env`]):
//! 1. `FERROTRON_NVRTC`: a `libnvrtc.so*` file or a directory holding one (when set, nothing
//!    else is tried: an explicit choice that fails is an error, not a silent fallback);
//! 2. beside the nvcc named by `FERROTRON_NVCC` (`<nvcc>/../../lib/libnvrtc.so.13`, the wheel's
//!    layout);
//! 3. the toolchain cache of `scripts/install-cuda-toolchain.sh`
//!    (`${FERROTRON_CUDA_CACHE:-~/.cache/ferrotron/cuda-13.0}/venv/lib/python3*/site-packages/nvidia/cu13/lib`);
//! 4. the system's dynamic loader (`LD_LIBRARY_PATH`, ldconfig) under the names cudarc tries
//!    (`libnvrtc.so`, `libnvrtc.so.13`, ...).
//!
//! cudarc loads NVRTC by those bare names and has no way to take a path. So a library found by
//! path (1-3) is first `dlopen`ed by its full path and kept loaded: the dynamic loader then
//! answers cudarc's `dlopen("libnvrtc.so.13")` with that already-loaded library (it matches
//! loaded libraries by their soname), and no `libnvrtc.so` symlink or `LD_LIBRARY_PATH` is needed.
//! The same goes for `libnvrtc-builtins.so.13.0`, which NVRTC itself loads by soname: the ones
//! beside the library are loaded by path first. NVRTC needs `cuda_bf16.h` from outside: the
//! first directory holding it among the library's `../include` (the cu13 wheel's layout),
//! `../../*/include` (the split cu12 wheels), `$CUDA_HOME/include`, `$CUDA_PATH/include` and
//! `/usr/local/cuda/include` is passed as an include path.
//! [`Nvrtc`] checks that cudarc really resolved to the same library (comparing the address of
//! `nvrtcVersion` in both), and every failure is [`Error::NvrtcUnavailable`], never cudarc's
//! panic. The first library loaded serves the whole process.

use crate::error::{Error, Result};
use codegen::cache::{Compiler, RunError};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The target of the generated PTX: `compute_80` (PTX, not a cubin), which ptx-emu runs and every
/// driver since CUDA 11 JIT-compiles for sm_80 and later GPUs.
pub const ARCH: &str = "compute_80";

/// The file names of NVRTC 13 tried in a directory, best first.
const FILE_NAMES: [&str; 2] = ["libnvrtc.so.13", "libnvrtc.so"];

/// A loaded NVRTC, ready to compile.
#[derive(Clone, Debug)]
pub struct Nvrtc {
    /// The library file, when it was found by path (`None`: the system's dynamic loader).
    library: Option<PathBuf>,
    /// `nvrtcVersion`.
    version: (i32, i32),
    /// A directory holding `cuda_bf16.h` to pass as an include path (see the module docs).
    include: Option<PathBuf>,
    /// The compiler's identity for the cache key.
    identity: String,
}

/// One lock for every NVRTC call in the process (compiles are rare; this keeps NVRTC's global
/// state, and cudarc's one-time loading, free of races).
static NVRTC_LOCK: Mutex<()> = Mutex::new(());

impl Nvrtc {
    /// Finds and loads NVRTC as the module documentation describes (`FERROTRON_NVRTC`, beside
    /// `FERROTRON_NVCC`, the toolchain cache, then the system).
    ///
    /// # Errors
    /// [`Error::NvrtcUnavailable`] naming every place tried.
    pub fn from_env() -> Result<Nvrtc> {
        if let Some(p) = std::env::var_os("FERROTRON_NVRTC").filter(|v| !v.is_empty()) {
            let p = PathBuf::from(p);
            return Nvrtc::at(&p).map_err(|e| match e {
                Error::NvrtcUnavailable { reason } => Error::NvrtcUnavailable {
                    reason: format!("FERROTRON_NVRTC={}: {reason}", p.display()),
                },
                other => other,
            });
        }
        let mut tried = Vec::new();
        for dir in toolchain_dirs() {
            match find_in(&dir) {
                Some(file) => match Nvrtc::at(&file) {
                    Ok(n) => return Ok(n),
                    Err(e) => tried.push(format!("{}: {e}", file.display())),
                },
                None => tried.push(format!("{}: no libnvrtc.so.13", dir.display())),
            }
        }
        match Nvrtc::system() {
            Ok(n) => Ok(n),
            Err(e) => {
                tried.push(match e {
                    Error::NvrtcUnavailable { reason } => reason,
                    other => other.to_string(),
                });
                Err(Error::NvrtcUnavailable {
                    reason: format!("tried {}", tried.join("; ")),
                })
            }
        }
    }

    /// Loads the NVRTC library at `path` (a `libnvrtc.so*` file, or a directory holding
    /// `libnvrtc.so.13` or `libnvrtc.so`).
    ///
    /// # Errors
    /// [`Error::NvrtcUnavailable`] when there is no such library, it does not load, or cudarc
    /// resolved NVRTC to another library already.
    pub fn at(path: &Path) -> Result<Nvrtc> {
        let file = if path.is_dir() {
            find_in(path).ok_or_else(|| Error::NvrtcUnavailable {
                reason: format!("{} holds none of {}", path.display(), FILE_NAMES.join(", ")),
            })?
        } else if path.is_file() {
            path.to_path_buf()
        } else {
            return Err(Error::NvrtcUnavailable {
                reason: format!("{}: no such file or directory", path.display()),
            });
        };
        let _guard = NVRTC_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let ours = dl::open(&file).map_err(|reason| Error::NvrtcUnavailable {
            reason: format!("{}: {reason}", file.display()),
        })?;
        let our_version =
            dl::symbol(ours, "nvrtcVersion").map_err(|reason| Error::NvrtcUnavailable {
                reason: format!("{}: {reason}", file.display()),
            })?;
        // NVRTC dlopens its builtins by soname (`libnvrtc-builtins.so.13.0`) from the loader's
        // search path, not from its own directory: load the ones beside it by path, likewise.
        for b in builtins_beside(&file) {
            dl::open(&b).map_err(|reason| Error::NvrtcUnavailable {
                reason: format!("{}: {reason}", b.display()),
            })?;
        }
        let (theirs, version) = cudarc_nvrtc_version()?;
        if theirs != our_version {
            return Err(Error::NvrtcUnavailable {
                reason: format!(
                    "{} loaded, but cudarc resolved NVRTC to another library already (version \
                     {}.{}; the first NVRTC loaded serves the whole process)",
                    file.display(),
                    version.0,
                    version.1
                ),
            });
        }
        let include = include_dir_for(Some(&file));
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let identity = format!(
            "nvrtc {}.{} ({}, {size} bytes)",
            version.0,
            version.1,
            file.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        Ok(Nvrtc {
            library: Some(file),
            version,
            include,
            identity,
        })
    }

    /// Loads NVRTC through the system's dynamic loader (`LD_LIBRARY_PATH`, ldconfig) under the
    /// names cudarc tries.
    ///
    /// # Errors
    /// [`Error::NvrtcUnavailable`] when the loader finds none.
    pub fn system() -> Result<Nvrtc> {
        let _guard = NVRTC_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let (addr, version) = cudarc_nvrtc_version()?;
        let file = dl::file_of(addr);
        Ok(Nvrtc {
            library: None,
            version,
            include: include_dir_for(file.as_deref()),
            identity: match &file {
                Some(f) => format!(
                    "nvrtc {}.{} (system: {}, {} bytes)",
                    version.0,
                    version.1,
                    f.display(),
                    std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)
                ),
                None => format!("nvrtc {}.{} (system)", version.0, version.1),
            },
        })
    }

    /// The library file, or `None` when the system's loader found it.
    pub fn library(&self) -> Option<&Path> {
        self.library.as_deref()
    }

    /// NVRTC's version (major, minor).
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// The include directory passed to NVRTC (for `cuda_bf16.h`), if any.
    pub fn include_dir(&self) -> Option<&Path> {
        self.include.as_deref()
    }

    /// The options every compile passes.
    fn options(&self) -> Vec<String> {
        let mut o = vec![format!("--gpu-architecture={ARCH}")];
        if let Some(inc) = &self.include {
            o.push(format!("--include-path={}", inc.display()));
        }
        o
    }

    /// Compiles `source` (CUDA C; `name` names the program in messages) to PTX for [`ARCH`].
    ///
    /// # Errors
    /// [`Error::KernelCompile`] with NVRTC's log when it rejects the source (or the source holds
    /// a NUL byte).
    pub fn compile(&self, name: &str, source: &str) -> Result<String> {
        let fail = |log: String| Error::KernelCompile {
            kernel: name.to_string(),
            compiler: self.identity.clone(),
            log,
        };
        if source.contains('\0') || name.contains('\0') {
            return Err(fail("the source or its name contains a NUL byte".into()));
        }
        let opts = cudarc::nvrtc::CompileOptions {
            options: self.options(),
            name: Some(format!("{name}.cu")),
            ..Default::default()
        };
        let _guard = NVRTC_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| match e {
            cudarc::nvrtc::CompileError::CompileError {
                nvrtc,
                options,
                log,
            } => fail(format!(
                "{nvrtc:?} with options {options:?}:\n{}",
                log.to_string_lossy()
            )),
            other => fail(format!("{other:?}")),
        })?;
        match ptx.as_bytes() {
            Some(bytes) => {
                let bytes = bytes.split(|&b| b == 0).next().unwrap_or(&[]);
                String::from_utf8(bytes.to_vec())
                    .map_err(|e| fail(format!("NVRTC's PTX is not UTF-8: {e}")))
            }
            None => Err(fail("NVRTC returned no PTX image".into())),
        }
    }
}

impl Compiler for Nvrtc {
    fn version(&self) -> String {
        self.identity.clone()
    }

    fn arch(&self) -> String {
        ARCH.to_string()
    }

    fn compile(&self, source: &str) -> std::result::Result<String, RunError> {
        let name = source
            .split("__global__ void ")
            .nth(1)
            .and_then(|s| s.split('(').next())
            .unwrap_or("kernel")
            .trim()
            .to_string();
        Nvrtc::compile(self, &name, source).map_err(|e| match e {
            Error::KernelCompile { log, .. } => RunError::Compile(log),
            other => RunError::Compile(other.to_string()),
        })
    }
}

/// The NVRTC builtins libraries (`libnvrtc-builtins.so.*`, not the `.alt` variants) in the
/// directory of `library`.
fn builtins_beside(library: &Path) -> Vec<PathBuf> {
    let Some(dir) = library.parent() else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .map(|n| n.to_string_lossy().starts_with("libnvrtc-builtins.so."))
                        .unwrap_or(false)
                        && p.is_file()
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// The include directory for `cuda_bf16.h` (see the module documentation), given the NVRTC
/// library file when known.
fn include_dir_for(library: Option<&Path>) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(root) = library.and_then(Path::parent).and_then(Path::parent) {
        candidates.push(root.join("include"));
        if let Some(pkgs) = root.parent() {
            let mut siblings: Vec<PathBuf> = std::fs::read_dir(pkgs)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.path().join("include"))
                        .collect()
                })
                .unwrap_or_default();
            siblings.sort();
            candidates.extend(siblings);
        }
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            candidates.push(PathBuf::from(v).join("include"));
        }
    }
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    candidates
        .into_iter()
        .find(|d| d.join("cuda_bf16.h").is_file())
}

/// The first NVRTC file in `dir`.
fn find_in(dir: &Path) -> Option<PathBuf> {
    FILE_NAMES.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// The toolchain's library directories, in order: beside `FERROTRON_NVCC`, then the cache of
/// `scripts/install-cuda-toolchain.sh`.
fn toolchain_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(nvcc) = std::env::var_os("FERROTRON_NVCC").filter(|v| !v.is_empty()) {
        if let Some(cu13) = Path::new(&nvcc).parent().and_then(Path::parent) {
            dirs.push(cu13.join("lib"));
        }
    }
    let cache = std::env::var_os("FERROTRON_CUDA_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|c| c.join("ferrotron").join("cuda-13.0"))
        });
    if let Some(cache) = cache {
        let lib = cache.join("venv").join("lib");
        let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("python3"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        pythons.sort();
        if pythons.is_empty() {
            dirs.push(lib.join("python3*/site-packages/nvidia/cu13/lib"));
        }
        for p in pythons {
            dirs.push(
                p.join("site-packages")
                    .join("nvidia")
                    .join("cu13")
                    .join("lib"),
            );
        }
    }
    dirs.dedup();
    dirs
}

/// The address of `nvrtcVersion` in the library cudarc loads, and the version it reports.
/// Call with [`NVRTC_LOCK`] held.
fn cudarc_nvrtc_version() -> Result<(usize, (i32, i32))> {
    // SAFETY: `is_culib_present` only tries to dlopen NVRTC under its usual names (and closes
    // what it opened); it runs no NVRTC code.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::NvrtcUnavailable {
            reason: "the dynamic loader finds no libnvrtc.so / libnvrtc.so.13 (not on \
                     LD_LIBRARY_PATH or in the ldconfig cache)"
                .to_string(),
        });
    }
    // SAFETY: the library is present (checked just above), so `culib` loads it instead of
    // panicking; `get` looks up a symbol whose C signature is
    // `nvrtcResult nvrtcVersion(int*, int*)`, and we only read the symbol's address.
    let addr = unsafe {
        let lib = cudarc::nvrtc::sys::culib();
        let f: unsafe extern "C" fn(*mut i32, *mut i32) -> cudarc::nvrtc::sys::nvrtcResult = *lib
            .get(b"nvrtcVersion\0")
            .map_err(|e| Error::NvrtcUnavailable {
                reason: format!("the loaded NVRTC has no nvrtcVersion: {e}"),
            })?;
        f as usize
    };
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: NVRTC is loaded (above); `nvrtcVersion` writes two ints through valid pointers.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::NvrtcUnavailable {
            reason: format!("nvrtcVersion failed: {r:?}"),
        });
    }
    Ok((addr, (major, minor)))
}

/// `dlopen` by full path (Linux): what lets cudarc's by-name loading find a library that is on
/// no search path.
#[cfg(target_os = "linux")]
mod dl {
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    const RTLD_NOW: c_int = 2;

    extern "C" {
        fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
        fn dlerror() -> *mut c_char;
    }

    fn last_error() -> String {
        // SAFETY: `dlerror` returns NULL or a NUL-terminated string owned by libc, valid until
        // the next dl* call on this thread; we copy it at once.
        unsafe {
            let e = dlerror();
            if e.is_null() {
                "unknown dlopen error".to_string()
            } else {
                CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        }
    }

    /// Opens `path` and keeps it loaded for the life of the process (the handle is never
    /// closed: cudarc relies on the library staying loaded). Returns the handle as an integer.
    pub(super) fn open(path: &Path) -> Result<usize, String> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| "the path contains a NUL byte".to_string())?;
        // SAFETY: `c` is a valid NUL-terminated path; loading NVRTC runs only its (trusted,
        // NVIDIA-supplied) initialisers. The handle is deliberately leaked.
        let h = unsafe { dlopen(c.as_ptr(), RTLD_NOW) };
        if h.is_null() {
            Err(last_error())
        } else {
            Ok(h as usize)
        }
    }

    #[repr(C)]
    struct DlInfo {
        fname: *const c_char,
        fbase: *mut c_void,
        sname: *const c_char,
        saddr: *mut c_void,
    }

    extern "C" {
        fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
    }

    /// The file of the loaded library holding address `addr`, if the loader knows it.
    pub(super) fn file_of(addr: usize) -> Option<std::path::PathBuf> {
        let mut info = DlInfo {
            fname: std::ptr::null(),
            fbase: std::ptr::null_mut(),
            sname: std::ptr::null(),
            saddr: std::ptr::null_mut(),
        };
        // SAFETY: `info` is a valid, writable `Dl_info` (four pointers, glibc's layout);
        // `dladdr` only reads the loader's tables for `addr` and fills `info`.
        let ok = unsafe { dladdr(addr as *const c_void, &mut info) };
        if ok == 0 || info.fname.is_null() {
            return None;
        }
        // SAFETY: on success `dli_fname` is a NUL-terminated path owned by the loader, valid
        // while the library stays loaded (NVRTC is never unloaded); we copy it at once.
        let name = unsafe { CStr::from_ptr(info.fname) };
        Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(
            name.to_bytes(),
        )))
    }

    /// The address of `name` in the library `handle` from [`open`].
    pub(super) fn symbol(handle: usize, name: &str) -> Result<usize, String> {
        let c = CString::new(name).map_err(|_| "symbol name contains a NUL byte".to_string())?;
        // SAFETY: `handle` came from a successful `dlopen` that is never closed; `c` is a valid
        // C string. We only read the symbol's address.
        let p = unsafe { dlsym(handle as *mut c_void, c.as_ptr()) };
        if p.is_null() {
            Err(format!("no symbol {name}: {}", last_error()))
        } else {
            Ok(p as usize)
        }
    }
}

/// Elsewhere NVRTC is only found by the system's loader.
#[cfg(not(target_os = "linux"))]
mod dl {
    use std::path::Path;

    pub(super) fn open(_path: &Path) -> Result<usize, String> {
        Err(
            "loading NVRTC by path is only supported on Linux; put it on the loader's search \
             path instead"
                .to_string(),
        )
    }

    pub(super) fn symbol(_handle: usize, _name: &str) -> Result<usize, String> {
        Err("unsupported".to_string())
    }

    pub(super) fn file_of(_addr: usize) -> Option<std::path::PathBuf> {
        None
    }
}
