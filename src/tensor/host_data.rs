//! Host-resident element storage: one typed vector per dtype.

use crate::dtype::DType;
use half::{bf16, f16};

/// The elements of a host buffer, typed.
#[derive(Debug, Clone)]
pub enum HostData {
    /// f32 elements.
    F32(Vec<f32>),
    /// bf16 elements.
    BF16(Vec<bf16>),
    /// f16 elements.
    F16(Vec<f16>),
    /// i32 elements.
    I32(Vec<i32>),
}

impl HostData {
    /// `len` zeros of `dtype`.
    pub fn zeros(dtype: DType, len: usize) -> Self {
        match dtype {
            DType::F32 => HostData::F32(vec![0.0; len]),
            DType::BF16 => HostData::BF16(vec![bf16::ZERO; len]),
            DType::F16 => HostData::F16(vec![f16::ZERO; len]),
            DType::I32 => HostData::I32(vec![0; len]),
        }
    }

    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            HostData::F32(_) => DType::F32,
            HostData::BF16(_) => DType::BF16,
            HostData::F16(_) => DType::F16,
            HostData::I32(_) => DType::I32,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::BF16(v) => v.len(),
            HostData::F16(v) => v.len(),
            HostData::I32(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw bytes (little-endian element representation), for uploads.
    pub fn as_bytes(&self) -> &[u8] {
        fn bytes<T>(v: &[T]) -> &[u8] {
            // SAFETY: f32/bf16/f16/i32 are plain-old-data without padding; the byte view covers
            // exactly the vector's initialised elements and borrows it immutably.
            unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
        }
        match self {
            HostData::F32(v) => bytes(v),
            HostData::BF16(v) => bytes(v),
            HostData::F16(v) => bytes(v),
            HostData::I32(v) => bytes(v),
        }
    }

    /// The raw bytes, mutable, for downloads.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        fn bytes<T>(v: &mut [T]) -> &mut [u8] {
            // SAFETY: as in `as_bytes`; every bit pattern is a valid f32/bf16/f16/i32, so writing
            // arbitrary bytes cannot create an invalid value.
            unsafe {
                std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v))
            }
        }
        match self {
            HostData::F32(v) => bytes(v),
            HostData::BF16(v) => bytes(v),
            HostData::F16(v) => bytes(v),
            HostData::I32(v) => bytes(v),
        }
    }

    /// Every element widened to f64 (i32 converts exactly).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            HostData::F32(v) => v.iter().map(|x| *x as f64).collect(),
            HostData::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            HostData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            HostData::I32(v) => v.iter().map(|x| *x as f64).collect(),
        }
    }

    /// Fills a float buffer with NaN (a no-op for i32: use a sentinel there).
    pub fn poison(&mut self) {
        match self {
            HostData::F32(v) => v.fill(f32::NAN),
            HostData::BF16(v) => v.fill(bf16::NAN),
            HostData::F16(v) => v.fill(f16::NAN),
            HostData::I32(v) => v.fill(i32::MIN),
        }
    }
}

/// Element types that a [`HostData`] can hold, with typed access.
pub trait HostElement: Copy + Send + Sync + 'static {
    /// Its run-time dtype.
    const DTYPE: DType;
    /// Wraps a vector.
    fn wrap(v: Vec<Self>) -> HostData;
    /// Borrows the elements if the dtype matches.
    fn view(d: &HostData) -> Option<&[Self]>;
    /// Mutably borrows the elements if the dtype matches.
    fn view_mut(d: &mut HostData) -> Option<&mut [Self]>;
}

macro_rules! host_element {
    ($t:ty, $variant:ident) => {
        impl HostElement for $t {
            const DTYPE: DType = DType::$variant;
            fn wrap(v: Vec<Self>) -> HostData {
                HostData::$variant(v)
            }
            fn view(d: &HostData) -> Option<&[Self]> {
                match d {
                    HostData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn view_mut(d: &mut HostData) -> Option<&mut [Self]> {
                match d {
                    HostData::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
host_element!(f32, F32);
host_element!(bf16, BF16);
host_element!(f16, F16);
host_element!(i32, I32);

/// Typed view of a host buffer whose dtype the op already validated.
///
/// Panics only on an internal bug (the op layer checks every dtype before enqueueing).
pub(crate) fn view<T: HostElement>(d: &HostData) -> &[T] {
    T::view(d).expect("dtype validated before enqueue")
}

/// Mutable typed view; see [`view`].
pub(crate) fn view_mut<T: HostElement>(d: &mut HostData) -> &mut [T] {
    T::view_mut(d).expect("dtype validated before enqueue")
}
