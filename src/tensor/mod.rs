//! Tensors: a buffer on a device, a shape and a dtype, in a stable row-major layout.
//!
//! A tensor's buffer is reference-counted and every enqueued op holds a reference to the buffers
//! it touches, so dropping a [`Tensor`] while a stream still uses it is safe: the memory is freed
//! when the last op that uses it has finished (on CUDA, when every stream that used it has passed
//! that point). Reading a tensor back to the host goes through a stream ([`Tensor::to_vec`]),
//! so it is ordered like any other access.

mod host_data;

pub(crate) use host_data::{view, view_mut};
pub use host_data::{HostData, HostElement};

use crate::backend::cuda::CudaMem;
use crate::backend::emu::EmuMem;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::stream::checked::{AccessState, TrackedBuffer};
use crate::stream::{Stream, StreamImpl};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

static NEXT_BUFFER: AtomicU64 = AtomicU64::new(1);

/// Where a buffer's elements live.
pub(crate) enum Memory {
    Host(RwLock<HostData>),
    Cuda(CudaMem),
    Emu(EmuMem),
}

/// A device allocation with its dtype and its checked-mode access history.
pub(crate) struct Buffer {
    id: u64,
    label: String,
    device: Device,
    dtype: DType,
    len: usize,
    mem: Memory,
    access: Mutex<AccessState>,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.device
            .note_free((self.len * self.dtype.size_in_bytes()) as u64);
    }
}

impl Buffer {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn host(&self) -> &RwLock<HostData> {
        match &self.mem {
            Memory::Host(h) => h,
            Memory::Cuda(_) | Memory::Emu(_) => unreachable!("host access to a device buffer"),
        }
    }

    pub fn cuda(&self) -> &CudaMem {
        match &self.mem {
            Memory::Cuda(c) => c,
            _ => unreachable!("CUDA access to a non-CUDA buffer"),
        }
    }

    pub fn emu(&self) -> &EmuMem {
        match &self.mem {
            Memory::Emu(e) => e,
            _ => unreachable!("emulator access to a non-emulator buffer"),
        }
    }

    pub(crate) fn memory(&self) -> &Memory {
        &self.mem
    }

    pub fn tracked(&self) -> TrackedBuffer<'_> {
        TrackedBuffer {
            id: self.id,
            label: &self.label,
            state: &self.access,
        }
    }
}

/// A dense row-major tensor on one device.
pub struct Tensor {
    buf: Arc<Buffer>,
    shape: Shape,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({}, {:?}, {}, {})",
            self.buf.label,
            self.shape,
            self.buf.dtype,
            self.buf.device.label()
        )
    }
}

impl Tensor {
    /// Another handle on this tensor's buffer (crate-internal: the stream's scratch workspace;
    /// public tensors are never aliased behind the caller's back).
    pub(crate) fn share(&self) -> Tensor {
        Tensor {
            buf: self.buf.clone(),
            shape: self.shape.clone(),
        }
    }

    fn new_buffer(device: &Device, shape: Shape, data: HostData) -> Result<Tensor> {
        Self::new_buffer_with(device, shape, data, false)
    }

    fn new_buffer_with(
        device: &Device,
        shape: Shape,
        data: HostData,
        poison: bool,
    ) -> Result<Tensor> {
        let id = NEXT_BUFFER.fetch_add(1, Ordering::Relaxed);
        let dtype = data.dtype();
        let len = data.len();
        let mem = match (device.cuda_state(), device.emu_state()) {
            (Some(cu), _) => Memory::Cuda(cu.upload(data.as_bytes())?),
            (None, Some(emu)) => Memory::Emu(emu.upload(data.as_bytes(), poison)?),
            (None, None) => Memory::Host(RwLock::new(data)),
        };
        device.note_alloc((len * dtype.size_in_bytes()) as u64);
        Ok(Tensor {
            buf: Arc::new(Buffer {
                id,
                label: format!("#{id} {shape:?} {dtype}"),
                device: device.clone(),
                dtype,
                len,
                mem,
                access: Mutex::new(AccessState::default()),
            }),
            shape,
        })
    }

    fn check_count(what: &str, shape: &Shape, got: usize) -> Result<()> {
        if shape.numel() != got {
            return Err(Error::ElementCount {
                what: what.to_string(),
                shape: shape.dims().to_vec(),
                expected: shape.numel(),
                got,
            });
        }
        Ok(())
    }

    /// A tensor holding a copy of `data` (f32, bf16, f16 or i32), shaped `shape`. The copy is
    /// synchronous: when this returns the tensor is ready for every stream.
    pub fn from_slice<T: HostElement>(
        device: &Device,
        data: &[T],
        shape: impl Into<Shape>,
    ) -> Result<Tensor> {
        let shape = shape.into();
        Self::check_count("Tensor::from_slice", &shape, data.len())?;
        Self::new_buffer(device, shape, T::wrap(data.to_vec()))
    }

    /// A tensor of `dtype` converted (rounded to nearest even) from f64 values.
    pub fn from_f64(
        device: &Device,
        data: &[f64],
        shape: impl Into<Shape>,
        dtype: DType,
    ) -> Result<Tensor> {
        let shape = shape.into();
        Self::check_count("Tensor::from_f64", &shape, data.len())?;
        let host = match dtype {
            DType::F32 => HostData::F32(data.iter().map(|&v| v as f32).collect()),
            DType::BF16 => HostData::BF16(data.iter().map(|&v| half::bf16::from_f64(v)).collect()),
            DType::F16 => HostData::F16(data.iter().map(|&v| half::f16::from_f64(v)).collect()),
            DType::I32 => {
                return Err(Error::UnsupportedDType {
                    op: "Tensor::from_f64",
                    what: "dtype".into(),
                    dtype,
                })
            }
        };
        Self::new_buffer(device, shape, host)
    }

    /// A zero-filled tensor.
    pub fn zeros(device: &Device, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape.numel();
        Self::new_buffer(device, shape, HostData::zeros(dtype, n))
    }

    /// A tensor filled with NaN (i32: `i32::MIN`): the poisoned output that tests hand to an op,
    /// so that an element the op forgot to write can never pass as correct.
    pub fn poisoned(device: &Device, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        let shape = shape.into();
        let mut h = HostData::zeros(dtype, shape.numel());
        h.poison();
        Self::new_buffer_with(device, shape, h, true)
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.buf.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.buf.len
    }

    /// The device holding the buffer.
    pub fn device(&self) -> &Device {
        &self.buf.device
    }

    /// The buffer's process-unique id (shown in checked-mode errors).
    pub fn buffer_id(&self) -> u64 {
        self.buf.id
    }

    /// The same buffer viewed with another shape of the same element count (no copy).
    pub fn reshape(self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        Self::check_count("Tensor::reshape", &shape, self.buf.len)?;
        Ok(Tensor {
            buf: self.buf,
            shape,
        })
    }

    pub(crate) fn buffer(&self) -> &Arc<Buffer> {
        &self.buf
    }

    /// Copies the tensor to the host through `stream` (ordered after the stream's earlier work,
    /// and checked like any read), blocking until the copy is done. The dtype must match `T`.
    pub fn to_vec<T: HostElement>(&self, stream: &Stream) -> Result<Vec<T>> {
        if self.dtype() != T::DTYPE {
            return Err(Error::DTypeMismatch {
                op: "Tensor::to_vec",
                what: "tensor".into(),
                expected: T::DTYPE,
                got: self.dtype(),
            });
        }
        let h = self.read_host(stream)?;
        Ok(T::view(&h).expect("dtype checked").to_vec())
    }

    /// Copies the tensor to the host through `stream`, widening every element to f64.
    pub fn to_f64_vec(&self, stream: &Stream) -> Result<Vec<f64>> {
        Ok(self.read_host(stream)?.to_f64())
    }

    fn read_host(&self, stream: &Stream) -> Result<HostData> {
        stream.same_device("Tensor::to_vec", "tensor", self.device())?;
        crate::ops::launch::check_access(stream, &[self], &[])?;
        match stream.imp() {
            StreamImpl::Cpu(_) => {
                let out: Arc<Mutex<Option<HostData>>> = Arc::new(Mutex::new(None));
                let slot = out.clone();
                let buf = self.buf.clone();
                stream.push_host("to_vec", move || {
                    let h = match buf.memory() {
                        Memory::Emu(e) => {
                            let mut h = HostData::zeros(buf.dtype, buf.len);
                            e.download(h.as_bytes_mut())?;
                            h
                        }
                        _ => buf.host().read().unwrap_or_else(|p| p.into_inner()).clone(),
                    };
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
                    Ok(())
                });
                stream.synchronize()?;
                let h = out.lock().unwrap_or_else(|p| p.into_inner()).take();
                h.ok_or_else(|| Error::AsyncFailure {
                    stream: stream.label().to_string(),
                    op: "to_vec".into(),
                    message: "the copy did not run".into(),
                })
            }
            StreamImpl::Cuda(s) => {
                let mut h = HostData::zeros(self.dtype(), self.numel());
                self.buf.cuda().download(s, h.as_bytes_mut())?;
                stream.synchronize()?;
                Ok(h)
            }
        }
    }

    /// Overwrites the tensor with `data` on `stream` (asynchronous; `data` is copied first).
    pub fn copy_from_slice<T: HostElement>(&mut self, stream: &Stream, data: &[T]) -> Result<()> {
        stream.same_device("Tensor::copy_from_slice", "tensor", self.device())?;
        if self.dtype() != T::DTYPE {
            return Err(Error::DTypeMismatch {
                op: "Tensor::copy_from_slice",
                what: "data".into(),
                expected: self.dtype(),
                got: T::DTYPE,
            });
        }
        Self::check_count("Tensor::copy_from_slice", &self.shape, data.len())?;
        crate::ops::launch::check_access(stream, &[], &[self])?;
        let staged = T::wrap(data.to_vec());
        match stream.imp() {
            StreamImpl::Cpu(_) => {
                let buf = self.buf.clone();
                stream.push_host("copy_from_slice", move || {
                    match buf.memory() {
                        Memory::Emu(e) => e.upload(staged.as_bytes())?,
                        _ => *buf.host().write().unwrap_or_else(|p| p.into_inner()) = staged,
                    }
                    Ok(())
                });
                Ok(())
            }
            StreamImpl::Cuda(s) => self.buf.cuda().upload_async(s, staged.as_bytes()),
        }
    }
}
