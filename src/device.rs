//! Devices: a handle to one backend instance (the CPU, or one CUDA GPU) and its configuration.

use crate::backend::cuda::CudaDevice;
use crate::backend::emu::{EmuDevice, EmuHandle, EmuOptions};
use crate::error::Result;
use crate::stream::{Event, Stream};
use std::fmt;
use std::sync::Arc;

/// Which backend a device runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Host memory; each stream is a worker thread. Always available.
    Cpu,
    /// A CUDA GPU through the driver API (loaded at run time).
    Cuda,
    /// An emulated GPU: the kernels' PTX run by ptx-emu on the CPU.
    Emu,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Emu => "emu",
        })
    }
}

/// Per-device settings.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Checked mode: every buffer access is checked against the stream order established by
    /// events, and a race is an [`crate::Error::UnsynchronizedAccess`]. Default: on in debug
    /// builds (and so in tests), off in release unless `FERROTRON_CHECKED=1`.
    pub checked: bool,
    /// Threads a single CPU op may use (GEMM). Default 1: on the CPU backend ranks are threads
    /// already, and oversubscribing the cores only slows everyone down.
    pub threads: usize,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        let env_checked = std::env::var("FERROTRON_CHECKED").ok();
        let checked = match env_checked.as_deref() {
            Some("1") | Some("true") => true,
            Some("0") | Some("false") => false,
            _ => cfg!(debug_assertions),
        };
        DeviceConfig {
            checked,
            threads: 1,
        }
    }
}

/// A handle to one device. Cheap to clone; clones are the same device.
#[derive(Clone)]
pub struct Device {
    inner: Arc<DeviceInner>,
}

struct DeviceInner {
    kind: BackendKind,
    ordinal: usize,
    config: DeviceConfig,
    label: String,
    cuda: Option<CudaDevice>,
    emu: Option<EmuHandle>,
    memory: MemoryCounters,
}

/// Bytes of tensor buffers alive on a device, now and at most since the last reset.
#[derive(Debug, Default)]
struct MemoryCounters {
    current: std::sync::atomic::AtomicU64,
    peak: std::sync::atomic::AtomicU64,
}

/// A device's tensor memory: bytes of buffers alive now, and the most alive at once since the
/// device was made (or [`Device::reset_peak_memory`]). Counts every tensor buffer (parameters,
/// gradients, activations, communication buffers) of every handle to the device; a buffer is
/// freed when its last user, including asynchronous work on a stream, lets go of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Bytes alive now.
    pub current: u64,
    /// Most bytes alive at once.
    pub peak: u64,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Device({})", self.inner.label)
    }
}

impl Device {
    /// The CPU backend with the default configuration.
    pub fn cpu() -> Device {
        Device::cpu_with(DeviceConfig::default())
    }

    /// The CPU backend with an explicit configuration.
    pub fn cpu_with(config: DeviceConfig) -> Device {
        Device {
            inner: Arc::new(DeviceInner {
                kind: BackendKind::Cpu,
                ordinal: 0,
                config,
                label: "cpu".to_string(),
                cuda: None,
                emu: None,
                memory: MemoryCounters::default(),
            }),
        }
    }

    /// CUDA GPU `ordinal`. Returns [`crate::Error::NoCudaDriver`] on a machine without the NVIDIA
    /// driver (never panics) and [`crate::Error::NoCudaDevice`] for an ordinal that is not there.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Device::cuda_with(ordinal, DeviceConfig::default())
    }

    /// CUDA GPU `ordinal` with an explicit configuration.
    pub fn cuda_with(ordinal: usize, config: DeviceConfig) -> Result<Device> {
        let cu = CudaDevice::new(ordinal)?;
        Ok(Device {
            inner: Arc::new(DeviceInner {
                kind: BackendKind::Cuda,
                ordinal,
                config,
                label: format!("cuda:{ordinal}"),
                cuda: Some(cu),
                emu: None,
                memory: MemoryCounters::default(),
            }),
        })
    }

    /// Emulated GPU `ordinal` (0..64): the CUDA kernels' PTX interpreted by ptx-emu, with
    /// bounds, initialisation and shared-memory race checks on every launch. All emulated devices
    /// of the process share one address space.
    pub fn emu(ordinal: usize) -> Result<Device> {
        Device::emu_with(ordinal, DeviceConfig::default(), EmuOptions::default())
    }

    /// Emulated GPU `ordinal` with explicit configuration and emulator options.
    pub fn emu_with(ordinal: usize, config: DeviceConfig, options: EmuOptions) -> Result<Device> {
        let emu = EmuDevice::new(ordinal, options)?;
        Ok(Device {
            inner: Arc::new(DeviceInner {
                kind: BackendKind::Emu,
                ordinal,
                config,
                label: format!("emu:{ordinal}"),
                cuda: None,
                emu: Some(Arc::new(emu)),
                memory: MemoryCounters::default(),
            }),
        })
    }

    /// Lets kernels on this device read and write memory of device `peer`
    /// (`cuCtxEnablePeerAccess`; both emulated or both CUDA). [`crate::Error::Unsupported`] for
    /// other pairs, [`crate::Error::Cuda`] when two GPUs have no peer path.
    pub fn enable_peer_access(&self, peer: &Device) -> Result<()> {
        match (&self.inner.emu, peer.kind()) {
            (Some(e), BackendKind::Emu) => {
                e.enable_peer_access(peer.ordinal() as u32);
                Ok(())
            }
            (None, BackendKind::Cuda) if self.kind() == BackendKind::Cuda => {
                match (self.cuda_state(), peer.cuda_state()) {
                    (Some(a), Some(b)) if self.ordinal() != peer.ordinal() => {
                        a.enable_peer_access(b)
                    }
                    _ => Ok(()), // the same GPU reaches its own memory
                }
            }
            _ => Err(crate::Error::Unsupported {
                op: "Device::enable_peer_access",
                backend: format!("{} -> {}", self.label(), peer.label()),
            }),
        }
    }

    /// The emulator's counters (instructions, sectors, bank conflicts, FLOPs) summed over every
    /// kernel launched on this emulated device so far; `None` for other backends.
    pub fn emu_metrics(&self) -> Option<ptx_emu::Metrics> {
        self.inner.emu.as_ref().map(|e| e.metrics())
    }

    /// A device of the given kind (ordinal ignored for the CPU).
    pub fn new(kind: BackendKind, ordinal: usize) -> Result<Device> {
        match kind {
            BackendKind::Cpu => Ok(Device::cpu()),
            BackendKind::Cuda => Device::cuda(ordinal),
            BackendKind::Emu => Device::emu(ordinal),
        }
    }

    /// The backend.
    pub fn kind(&self) -> BackendKind {
        self.inner.kind
    }

    /// The ordinal (0 for the CPU).
    pub fn ordinal(&self) -> usize {
        self.inner.ordinal
    }

    /// `cpu` or `cuda:N`.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// The configuration.
    pub fn config(&self) -> &DeviceConfig {
        &self.inner.config
    }

    /// Tensor memory on this device: bytes alive now and the peak (see [`MemoryUsage`]).
    pub fn memory_usage(&self) -> MemoryUsage {
        use std::sync::atomic::Ordering::Relaxed;
        MemoryUsage {
            current: self.inner.memory.current.load(Relaxed),
            peak: self.inner.memory.peak.load(Relaxed),
        }
    }

    /// Starts a new peak: the peak becomes the bytes alive now.
    pub fn reset_peak_memory(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.inner.memory;
        m.peak.store(m.current.load(Relaxed), Relaxed);
    }

    pub(crate) fn note_alloc(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.inner.memory;
        let now = m.current.fetch_add(bytes, Relaxed) + bytes;
        m.peak.fetch_max(now, Relaxed);
    }

    pub(crate) fn note_free(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.inner.memory.current.fetch_sub(bytes, Relaxed);
    }

    /// Whether checked mode is on.
    pub fn is_checked(&self) -> bool {
        self.inner.config.checked
    }

    /// A new stream on this device.
    pub fn new_stream(&self) -> Result<Stream> {
        Stream::create(self, None)
    }

    /// A new stream with a name used in error messages and traces (e.g. `"compute"`, `"comm"`).
    pub fn new_named_stream(&self, name: &str) -> Result<Stream> {
        Stream::create(self, Some(name))
    }

    /// A new, never-recorded event.
    pub fn new_event(&self) -> Result<Event> {
        Event::new(self)
    }

    /// Whether memory of `other` can be used by streams of `self`: all CPU devices share host
    /// memory; CUDA devices must be the same GPU.
    pub fn compatible(&self, other: &Device) -> bool {
        match (self.inner.kind, other.inner.kind) {
            (BackendKind::Cpu, BackendKind::Cpu) => true,
            (BackendKind::Cuda, BackendKind::Cuda) | (BackendKind::Emu, BackendKind::Emu) => {
                self.inner.ordinal == other.inner.ordinal
            }
            _ => false,
        }
    }

    pub(crate) fn cuda_state(&self) -> Option<&CudaDevice> {
        self.inner.cuda.as_ref()
    }

    pub(crate) fn emu_state(&self) -> Option<&EmuHandle> {
        self.inner.emu.as_ref()
    }
}
