//! The emu backend: the CUDA backend's model (device buffers, streams, events, modules loaded
//! from the embedded PTX, kernel launches) over `ptx-emu`, our PTX interpreter. The same kernels
//! that ship in the fatbin run here from their sm_80 PTX, so every CUDA kernel is checked
//! against its CPU reference on machines without a GPU.
//!
//! - Every emu device lives in one process-wide [`ptx_emu::Memory`] (one address space, one
//!   range per ordinal), so several emulated GPUs can address each other's buffers once peer
//!   access is enabled ([`crate::Device::enable_peer_access`]).
//! - A stream is a CPU worker queue, like the CPU backend's; a kernel launch is a task on it that
//!   runs the interpreter to completion. A kernel fault (out-of-bounds, uninitialised read,
//!   shared-memory race, deadlock) fails the stream with [`crate::Error::Emu`].
//! - Buffers are allocated in the emulator's memory; [`crate::Tensor::poisoned`] marks its bytes
//!   poisoned, so a kernel that reads an output before writing it is reported.

pub(crate) mod copy;
pub mod elementwise;
pub mod gemm;
pub(crate) mod layers;

use crate::error::{Error, Result};
use ptx_emu::{Checks, LaunchConfig, LoadedModule, Memory, Metrics, Module};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The one address space of every emulated device in this process.
pub(crate) fn memory() -> &'static Memory {
    static MEMORY: OnceLock<Memory> = OnceLock::new();
    MEMORY.get_or_init(Memory::new)
}

/// Options of the emulated devices.
#[derive(Clone, Debug, PartialEq)]
pub struct EmuOptions {
    /// Seed of the thread interleaving (vary it to shake out ordering bugs). Default: the
    /// `FERROTRON_EMU_SEED` environment variable, else 0.
    pub seed: u64,
    /// The sanitizer checks run on every launch.
    pub checks: Checks,
}

impl Default for EmuOptions {
    fn default() -> Self {
        let seed = std::env::var("FERROTRON_EMU_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        EmuOptions {
            seed,
            checks: Checks::default(),
        }
    }
}

/// The shape of one emulated launch: CTAs per grid dimension, threads per CTA dimension and
/// dynamic (`extern __shared__`) shared-memory bytes, as in `cuLaunchKernel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LaunchShape {
    /// CTAs per grid dimension (x, y, z).
    pub grid: [u32; 3],
    /// Threads per CTA dimension (x, y, z).
    pub block: [u32; 3],
    /// Dynamic shared memory per CTA, in bytes.
    pub dynamic_shared: u32,
}

/// One emulated GPU: its ordinal and the modules loaded on it.
pub(crate) struct EmuDevice {
    ordinal: u32,
    options: EmuOptions,
    modules: Mutex<HashMap<String, LoadedModule>>,
    metrics: Mutex<Metrics>,
}

impl EmuDevice {
    pub fn new(ordinal: usize, options: EmuOptions) -> Result<EmuDevice> {
        let ordinal = u32::try_from(ordinal)
            .ok()
            .filter(|&o| o < 64)
            .ok_or(Error::NoEmuDevice { ordinal })?;
        Ok(EmuDevice {
            ordinal,
            options,
            modules: Mutex::new(HashMap::new()),
            metrics: Mutex::new(Metrics::default()),
        })
    }

    /// Lets kernels on this device access memory of emulated device `peer`.
    pub fn enable_peer_access(&self, peer: u32) {
        memory().enable_peer_access(self.ordinal, peer);
    }

    /// The embedded image `module` parsed and loaded on this device (once).
    fn module(&self, module: &str) -> Result<LoadedModule> {
        let mut mods = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = mods.get(module) {
            return Ok(m.clone());
        }
        let image = crate::kernels::image(module)?;
        let parsed = Module::parse(image.ptx).map_err(|e| Error::Emu {
            kernel: module.to_string(),
            error: e,
        })?;
        let loaded = parsed
            .load(memory(), self.ordinal)
            .map_err(|e| Error::Emu {
                kernel: module.to_string(),
                error: e,
            })?;
        mods.insert(module.to_string(), loaded.clone());
        Ok(loaded)
    }

    /// Parses PTX text generated at run time (e.g. by NVRTC) and loads it on this device under
    /// `key` (once: a key already loaded is left as it is), so that [`EmuDevice::launch`] with
    /// `module = key` runs its functions. Keys share the namespace of the embedded images: use
    /// a prefix no image has (e.g. `fused/`).
    pub fn load_ptx(&self, key: &str, ptx: &str) -> Result<()> {
        let mut mods = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if mods.contains_key(key) {
            return Ok(());
        }
        let emu = |e| Error::Emu {
            kernel: key.to_string(),
            error: e,
        };
        let loaded = Module::parse(ptx)
            .map_err(emu)?
            .load(memory(), self.ordinal)
            .map_err(emu)?;
        mods.insert(key.to_string(), loaded);
        Ok(())
    }

    /// Runs `function` of image `module` with the parameter bytes `params` on a 1-D grid
    /// (synchronously: call it from a stream task). See [`EmuDevice::launch_with`].
    pub fn launch(
        &self,
        module: &str,
        function: &str,
        params: &[u8],
        grid: u32,
        block: u32,
    ) -> Result<()> {
        self.launch_with(
            module,
            function,
            params,
            LaunchShape {
                grid: [grid, 1, 1],
                block: [block, 1, 1],
                dynamic_shared: 0,
            },
        )
        .map(|_| ())
    }

    /// Runs `function` of image `module` with the parameter bytes `params` on a 3-D grid and
    /// block with `shape.dynamic_shared` bytes of dynamic shared memory (synchronously: call it
    /// from a stream task). Returns this launch's counters (also added to [`EmuDevice::metrics`]).
    pub fn launch_with(
        &self,
        module: &str,
        function: &str,
        params: &[u8],
        shape: LaunchShape,
    ) -> Result<Metrics> {
        let m = self.module(module)?;
        let cfg = LaunchConfig {
            grid: shape.grid,
            block: shape.block,
            dynamic_shared: shape.dynamic_shared,
            seed: self.options.seed,
            checks: self.options.checks,
            ..LaunchConfig::default()
        };
        let metrics = m.launch(function, params, &cfg).map_err(|e| Error::Emu {
            kernel: function.to_string(),
            error: e,
        })?;
        self.metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .merge(&metrics);
        Ok(metrics)
    }

    /// The counters summed over every launch on this device so far.
    pub fn metrics(&self) -> Metrics {
        self.metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Allocates `bytes` and fills them with `data` (or poisons them when `poison`).
    pub fn upload(&self, data: &[u8], poison: bool) -> Result<EmuMem> {
        let mem = memory();
        let addr = mem
            .alloc(self.ordinal, data.len() as u64)
            .map_err(emu_memory_error)?;
        if poison {
            mem.poison(addr, data.len() as u64)
        } else {
            mem.write(addr, data)
        }
        .map_err(emu_memory_error)?;
        Ok(EmuMem {
            addr,
            len: data.len(),
        })
    }
}

fn emu_memory_error(e: ptx_emu::EmuError) -> Error {
    Error::Emu {
        kernel: "(memory)".to_string(),
        error: e,
    }
}

/// One buffer in the emulator's memory; freed on drop (every stream task that uses the buffer
/// holds the tensor's buffer alive, so the free comes after the last use).
pub(crate) struct EmuMem {
    addr: u64,
    len: usize,
}

impl EmuMem {
    /// The device address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Copies the buffer out (call from a stream task).
    pub fn download(&self, out: &mut [u8]) -> Result<()> {
        debug_assert_eq!(out.len(), self.len);
        memory()
            .read_bytes(self.addr, out)
            .map_err(emu_memory_error)
    }

    /// Overwrites the buffer (call from a stream task).
    pub fn upload(&self, data: &[u8]) -> Result<()> {
        memory().write(self.addr, data).map_err(emu_memory_error)
    }
}

impl Drop for EmuMem {
    fn drop(&mut self) {
        let _ = memory().free(self.addr);
    }
}

/// Shared handle used by [`crate::Device`].
pub(crate) type EmuHandle = Arc<EmuDevice>;
