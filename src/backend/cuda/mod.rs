//! The CUDA backend: a context per GPU, streams, events and device memory through `cudarc`, with
//! the driver loaded at run time. Nothing links CUDA at build time, and a machine without the
//! driver gets [`Error::NoCudaDriver`] from [`probe`], never a panic.

pub mod cublaslt;
pub mod elementwise;
pub mod gemm;
pub(crate) mod layers;

use crate::error::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Maps a driver error to [`Error::Cuda`], naming the call.
pub(crate) fn driver_error(call: &str, e: DriverError) -> Error {
    Error::Cuda {
        call: call.to_string(),
        message: e.to_string(),
    }
}

/// Checks that the CUDA driver library can be loaded, without touching a GPU.
pub fn probe() -> Result<()> {
    // SAFETY: only tries to dlopen the driver library by its usual names; loading it runs no
    // CUDA call and has no effect when it fails.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::NoCudaDriver {
            detail: "the dynamic loader found no libcuda.so / libcuda.so.1 (no NVIDIA driver)"
                .to_string(),
        })
    }
}

/// Number of CUDA devices, or [`Error::NoCudaDriver`].
pub fn device_count() -> Result<usize> {
    probe()?;
    let n = CudaContext::device_count().map_err(|e| driver_error("cuDeviceGetCount", e))?;
    Ok(n.max(0) as usize)
}

/// Why no GPU test can run here, or `None` when a CUDA device is present.
pub fn unavailable_reason() -> Option<String> {
    match device_count() {
        Ok(0) => Some("the CUDA driver reports no device".to_string()),
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// One GPU: its primary context and the kernel modules loaded into it.
pub(crate) struct CudaDevice {
    ctx: Arc<CudaContext>,
    /// The stream allocations, synchronous uploads and frees are ordered on.
    home: Arc<CudaStream>,
    modules: Mutex<HashMap<String, Arc<CudaModule>>>,
}

impl CudaDevice {
    pub fn new(ordinal: usize) -> Result<CudaDevice> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::NoCudaDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_error("cuCtxCreate", e))?;
        // SAFETY: ferrotron orders every cross-stream use itself (explicit events, checked by
        // checked mode) and keeps buffers alive until the streams that used them are done (see
        // `CudaMem`'s Drop), which is what disabling cudarc's own tracking requires.
        unsafe { ctx.disable_event_tracking() };
        let home = ctx
            .new_stream()
            .map_err(|e| driver_error("cuStreamCreate", e))?;
        Ok(CudaDevice {
            ctx,
            home,
            modules: Mutex::new(HashMap::new()),
        })
    }

    pub fn new_stream(&self) -> Result<Arc<CudaStream>> {
        self.ctx
            .new_stream()
            .map_err(|e| driver_error("cuStreamCreate", e))
    }

    pub fn new_event(&self) -> Result<CudaEvent> {
        self.ctx
            .new_event(None)
            .map_err(|e| driver_error("cuEventCreate", e))
    }

    /// The kernel `function` of the embedded image `module` (loaded once per context).
    pub fn function(&self, module: &str, function: &str) -> Result<CudaFunction> {
        let mut mods = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        let m = match mods.get(module) {
            Some(m) => m.clone(),
            None => {
                let image = crate::kernels::image(module)?;
                let m = self
                    .ctx
                    .load_module(cudarc::nvrtc::Ptx::from_binary(image.fatbin.to_vec()))
                    .map_err(|e| driver_error(&format!("cuModuleLoadData({module})"), e))?;
                mods.insert(module.to_string(), m.clone());
                m
            }
        };
        m.load_function(function)
            .map_err(|e| driver_error(&format!("cuModuleGetFunction({function})"), e))
    }

    /// The kernel `function` of PTX text generated at run time (e.g. by NVRTC), loaded into this
    /// context under `key` once (the driver JIT-compiles the PTX for the GPU on the first load).
    /// Keys share the namespace of the embedded images: use a prefix no image has (`fused/`).
    pub fn function_from_ptx(&self, key: &str, ptx: &str, function: &str) -> Result<CudaFunction> {
        let mut mods = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        let m = match mods.get(key) {
            Some(m) => m.clone(),
            None => {
                if ptx.contains('\0') {
                    // cudarc would panic making a C string of it.
                    return Err(Error::Cuda {
                        call: format!("cuModuleLoadData({key})"),
                        message: "the PTX text contains a NUL byte".to_string(),
                    });
                }
                let m = self
                    .ctx
                    .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                    .map_err(|e| driver_error(&format!("cuModuleLoadData({key})"), e))?;
                mods.insert(key.to_string(), m.clone());
                m
            }
        };
        m.load_function(function)
            .map_err(|e| driver_error(&format!("cuModuleGetFunction({function})"), e))
    }

    /// Lets kernels in this context read and write `peer`'s memory (`cuCtxEnablePeerAccess`);
    /// already enabled is fine. [`Error::Cuda`] when the two GPUs cannot reach each other.
    pub fn enable_peer_access(&self, peer: &CudaDevice) -> Result<()> {
        let (me, other) = (self.ctx.cu_device(), peer.ctx.cu_device());
        let mut can = 0;
        // SAFETY: `can` is a live out-parameter; both devices are valid ordinals of contexts we
        // hold.
        unsafe { cudarc::driver::sys::cuDeviceCanAccessPeer(&mut can, me, other) }
            .result()
            .map_err(|e| driver_error("cuDeviceCanAccessPeer", e))?;
        if can == 0 {
            return Err(Error::Cuda {
                call: "cuDeviceCanAccessPeer".to_string(),
                message: format!(
                    "GPU {} cannot access GPU {} (no NVLink / PCIe peer path)",
                    self.ctx.ordinal(),
                    peer.ctx.ordinal()
                ),
            });
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
        // SAFETY: this context is current on the thread (bound above) and `peer.ctx` is a live
        // context; flags must be 0.
        let r = unsafe { cudarc::driver::sys::cuCtxEnablePeerAccess(peer.ctx.cu_ctx(), 0) };
        match r {
            cudarc::driver::sys::CUresult::CUDA_SUCCESS
            | cudarc::driver::sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => Ok(()),
            other => Err(driver_error("cuCtxEnablePeerAccess", DriverError(other))),
        }
    }

    /// Waits until every stream of this GPU is idle (`cuCtxSynchronize`).
    pub fn synchronize(&self) -> Result<()> {
        self.ctx
            .synchronize()
            .map_err(|e| driver_error("cuCtxSynchronize", e))
    }

    /// Allocates `bytes` on the home stream and fills them with `fill` (a byte value),
    /// synchronously.
    pub fn alloc(&self, bytes: usize, fill: u8) -> Result<CudaMem> {
        let home = &self.home;
        let bytes = bytes.max(1);
        let mut slice = home
            .alloc_zeros::<u8>(bytes)
            .map_err(|e| driver_error("cuMemAlloc", e))?;
        if fill != 0 {
            let host = vec![fill; bytes];
            home.memcpy_htod(&host, &mut slice)
                .map_err(|e| driver_error("cuMemcpyHtoD", e))?;
        }
        home.synchronize()
            .map_err(|e| driver_error("cuStreamSynchronize", e))?;
        Ok(CudaMem {
            slice: Some(slice),
            home: home.clone(),
            users: Mutex::new(Vec::new()),
        })
    }

    /// Allocates and uploads `data`, synchronously (the buffer is ready for every stream).
    pub fn upload(&self, data: &[u8]) -> Result<CudaMem> {
        let home = &self.home;
        let mut mem = self.alloc(data.len(), 0)?;
        if !data.is_empty() {
            let slice = mem.slice.as_mut().expect("live until drop");
            home.memcpy_htod(data, &mut slice.slice_mut(..data.len()))
                .map_err(|e| driver_error("cuMemcpyHtoD", e))?;
            home.synchronize()
                .map_err(|e| driver_error("cuStreamSynchronize", e))?;
        }
        Ok(mem)
    }
}

/// Device memory of one buffer. Freed on its home stream only after every stream that used it
/// has reached the point of its last use (the home stream waits on each of them), so dropping a
/// tensor while kernels still read it is safe.
pub(crate) struct CudaMem {
    slice: Option<CudaSlice<u8>>,
    home: Arc<CudaStream>,
    users: Mutex<Vec<Arc<CudaStream>>>,
}

impl CudaMem {
    /// The raw device address, noting that `stream` uses the buffer.
    pub fn ptr(&self, stream: &Arc<CudaStream>) -> u64 {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if !users.iter().any(|s| s.cu_stream() == stream.cu_stream()) {
            users.push(stream.clone());
        }
        let slice = self.slice.as_ref().expect("live until drop");
        let (ptr, _sync) = slice.device_ptr(stream);
        ptr
    }

    /// Copies `bytes.len()` bytes from the device into `bytes` on `stream` (the caller
    /// synchronizes `stream` before reading `bytes`).
    pub fn download(&self, stream: &Arc<CudaStream>, bytes: &mut [u8]) -> Result<()> {
        let slice = self.slice.as_ref().expect("live until drop");
        self.ptr(stream);
        stream
            .memcpy_dtoh(&slice.slice(..bytes.len()), bytes)
            .map_err(|e| driver_error("cuMemcpyDtoH", e))
    }

    /// The device address of bytes `offset .. offset + len` of this buffer for a copy on
    /// `stream`, with the stream's context made current (panics past the end: callers pass
    /// offsets inside their own layout).
    fn range_ptr(&self, stream: &Arc<CudaStream>, offset: usize, len: usize) -> Result<u64> {
        let slice = self.slice.as_ref().expect("live until drop");
        assert!(
            offset + len <= slice.len(),
            "copy past the end of a device buffer"
        );
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
        Ok(self.ptr(stream) + offset as u64)
    }

    /// Copies `bytes` to byte offset `offset` of this buffer, ordered on `stream` (the host
    /// bytes may be dropped when this returns: the driver stages pageable memory first).
    pub fn write_at(&self, stream: &Arc<CudaStream>, offset: usize, bytes: &[u8]) -> Result<()> {
        let ptr = self.range_ptr(stream, offset, bytes.len())?;
        // SAFETY: `ptr .. ptr + bytes.len()` lies inside this live allocation (`range_ptr`);
        // the copy is ordered on `stream`, and the driver stages pageable host memory before the
        // call returns.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(ptr, bytes, stream.cu_stream())
                .map_err(|e| driver_error("cuMemcpyHtoDAsync", e))
        }
    }

    /// Reads `bytes.len()` bytes at byte offset `offset` of this buffer on `stream`, then
    /// synchronizes `stream` (so `bytes` holds them on return).
    pub fn read_at(&self, stream: &Arc<CudaStream>, offset: usize, bytes: &mut [u8]) -> Result<()> {
        let ptr = self.range_ptr(stream, offset, bytes.len())?;
        // SAFETY: the source range lies inside this live allocation (`range_ptr`); `bytes`
        // is a live host buffer of the copied length, and the stream is synchronized before it
        // is read or dropped.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(bytes, ptr, stream.cu_stream())
                .map_err(|e| driver_error("cuMemcpyDtoHAsync", e))?;
        }
        stream
            .synchronize()
            .map_err(|e| driver_error("cuStreamSynchronize", e))
    }

    /// Copies host bytes to the device on `stream`.
    pub fn upload_async(&self, stream: &Arc<CudaStream>, bytes: &[u8]) -> Result<()> {
        let ptr = self.ptr(stream);
        // SAFETY: `ptr` addresses this live allocation of at least `bytes.len()` bytes (the op
        // layer checked the length); the copy is ordered on `stream`, and the host memory is
        // synchronously staged by the driver for pageable memory before the call returns.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(ptr, bytes, stream.cu_stream())
                .map_err(|e| driver_error("cuMemcpyHtoDAsync", e))
        }
    }
}

impl Drop for CudaMem {
    fn drop(&mut self) {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        for u in users.iter() {
            if u.cu_stream() != self.home.cu_stream() {
                // The free below is ordered on `home`; make `home` wait for every other user.
                let _ = self.home.join(u);
            }
        }
    }
}
