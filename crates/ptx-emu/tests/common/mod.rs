//! Helpers shared by the integration tests: parameter packing, device buffers, launch configs,
//! and the nvcc lookup used to check that the committed fixture PTX is not stale.

#![allow(dead_code)]

use ptx_emu::{EmuError, LaunchConfig, LoadedModule, Memory, Metrics, Module};
use std::path::{Path, PathBuf};

/// A kernel parameter buffer laid out like the C ABI lays out the arguments: every argument at
/// the next multiple of its own size (8-byte pointers, 4-byte ints and floats).
#[derive(Clone, Debug, Default)]
pub struct Params(Vec<u8>);

impl Params {
    pub fn new() -> Params {
        Params(Vec::new())
    }

    fn push(mut self, bytes: &[u8]) -> Params {
        let align = bytes.len();
        while self.0.len() % align != 0 {
            self.0.push(0);
        }
        self.0.extend_from_slice(bytes);
        self
    }

    /// Pads to a multiple of `align` (for an aligned `.b8` array parameter).
    pub fn align(mut self, align: usize) -> Params {
        while self.0.len() % align != 0 {
            self.0.push(0);
        }
        self
    }

    /// A pointer (device address).
    pub fn ptr(self, p: u64) -> Params {
        self.push(&p.to_le_bytes())
    }

    pub fn i32(self, v: i32) -> Params {
        self.push(&v.to_le_bytes())
    }

    pub fn u32(self, v: u32) -> Params {
        self.push(&v.to_le_bytes())
    }

    pub fn f32(self, v: f32) -> Params {
        self.push(&v.to_le_bytes())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A module loaded on device 0 of a fresh address space.
pub struct Dev {
    pub mem: Memory,
    pub module: LoadedModule,
}

impl Dev {
    /// Parses and loads `ptx`, panicking with the error (a fixture must parse).
    pub fn new(ptx: &str) -> Dev {
        let module = Module::parse(ptx).unwrap_or_else(|e| panic!("fixture does not parse: {e}"));
        let mem = Memory::new();
        let module = module.load(&mem, 0).expect("load");
        Dev { mem, module }
    }

    /// Allocates and fills a buffer with `bytes`.
    pub fn upload_bytes(&self, bytes: &[u8]) -> u64 {
        let a = self.mem.alloc(0, bytes.len() as u64).expect("alloc");
        self.mem.write(a, bytes).expect("write");
        a
    }

    pub fn upload_f32(&self, v: &[f32]) -> u64 {
        self.upload_bytes(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }

    pub fn upload_i32(&self, v: &[i32]) -> u64 {
        self.upload_bytes(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }

    pub fn upload_u16(&self, v: &[u16]) -> u64 {
        self.upload_bytes(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }

    /// An output buffer of `bytes` bytes, poisoned: reading it before writing it is an error,
    /// and any element the kernel forgets stays 0xFF.. (NaN / -1).
    pub fn output(&self, bytes: u64) -> u64 {
        let a = self.mem.alloc(0, bytes).expect("alloc");
        self.mem.poison(a, bytes).expect("poison");
        a
    }

    /// A zero-filled (initialised) buffer.
    pub fn zeroed(&self, bytes: u64) -> u64 {
        let a = self.mem.alloc(0, bytes).expect("alloc");
        self.mem.memset(a, 0, bytes).expect("memset");
        a
    }

    pub fn read_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_bytes(addr, &mut out).expect("read");
        out
    }

    pub fn read_f32(&self, addr: u64, n: usize) -> Vec<f32> {
        self.read_bytes(addr, 4 * n)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn read_i32(&self, addr: u64, n: usize) -> Vec<i32> {
        self.read_bytes(addr, 4 * n)
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn read_u64(&self, addr: u64, n: usize) -> Vec<u64> {
        self.read_bytes(addr, 8 * n)
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Launches `kernel`.
    pub fn launch(
        &self,
        kernel: &str,
        params: &Params,
        cfg: &LaunchConfig,
    ) -> Result<Metrics, EmuError> {
        self.module.launch(kernel, params.bytes(), cfg)
    }
}

/// A launch configuration with the given grid, block and interleaving seed, and an instruction
/// limit so that a kernel that spins fails fast instead of hanging the test.
pub fn cfg(grid: [u32; 3], block: [u32; 3], seed: u64) -> LaunchConfig {
    LaunchConfig {
        grid,
        block,
        seed,
        max_instructions: 50_000_000,
        ..LaunchConfig::default()
    }
}

/// A 1-D launch configuration (see [`cfg`]).
pub fn cfg1(blocks: u32, threads: u32, seed: u64) -> LaunchConfig {
    cfg([blocks, 1, 1], [threads, 1, 1], seed)
}

/// nvcc, looked up like the root crate's build.rs does: `$FERROTRON_NVCC` (authoritative when
/// set), then the cache that `scripts/install-cuda-toolchain.sh` fills (`$FERROTRON_CUDA_CACHE`,
/// else `${XDG_CACHE_HOME:-$HOME/.cache}/ferrotron/cuda-13.0`), then `nvcc` on `PATH`.
pub fn find_nvcc() -> Result<PathBuf, String> {
    use std::env;
    if let Some(explicit) = env::var_os("FERROTRON_NVCC").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&explicit);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("FERROTRON_NVCC={} is not a file", p.display()))
        };
    }
    let cache = match env::var_os("FERROTRON_CUDA_CACHE").filter(|v| !v.is_empty()) {
        Some(c) => Some(PathBuf::from(c)),
        None => env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache"))
            })
            .map(|c| c.join("ferrotron").join("cuda-13.0")),
    };
    if let Some(cache) = &cache {
        if let Some(p) = nvcc_in_cache(cache) {
            return Ok(p);
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "no nvcc found (FERROTRON_NVCC unset, none in the cache {}, none on PATH)",
        cache
            .map(|c| c.display().to_string())
            .unwrap_or_else(|| "(no HOME)".into())
    ))
}

/// `<cache>/venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc`, if present.
fn nvcc_in_cache(cache: &Path) -> Option<PathBuf> {
    let lib = cache.join("venv").join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    pythons.sort();
    pythons
        .into_iter()
        .map(|p| p.join("site-packages/nvidia/cu13/bin/nvcc"))
        .find(|p| p.is_file())
}

/// The flags the root crate's build.rs uses for the emulator's PTX (`PTX_FLAGS` +
/// `COMMON_FLAGS`).
pub const NVCC_PTX_FLAGS: &[&str] = &["--ptx", "-arch=sm_80", "-O3", "-std=c++17"];

/// PTX text without nvcc's leading header comment (compiler build id and version lines).
pub fn strip_ptx_header(ptx: &str) -> String {
    ptx.lines()
        .skip_while(|l| l.trim().is_empty() || l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// bf16 bits of `x`, rounded to nearest even (x finite).
pub fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

pub fn bf16_value(bits: u16) -> f32 {
    half::bf16::from_bits(bits).to_f32()
}
