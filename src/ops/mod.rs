//! The operators. Each one validates its operands (shape, rank, dtype, device, aliasing: a typed
//! error names what was wrong), records its accesses for checked mode, and enqueues its work on
//! the stream the caller names. Outputs are caller-provided tensors, as in CUDA libraries.
//!
//! | op | CPU | CUDA | reference |
//! |----|-----|------|-----------|
//! | [`gemm`] / [`gemm_epilogue`] | faer (f32 accumulation) + f32 epilogue pass | `kernels/gemm/gemm.cu` (bf16, sm_80; also on the emulator) | [`crate::reference::gemm`] |
//! | [`bias_gelu_fwd`] / [`bias_gelu_bwd`] | yes | `kernels/elementwise/bias_gelu.cu` (also on the emulator) | [`crate::reference::bias_gelu`] |
//! | [`bias::bias_add`] / [`bias::column_sum`] / [`bias::add`] | yes | issue #8 | f64 in the layer tests |
//! | [`shard::split_last`] / [`shard::split_first`] / [`shard::concat_last`] / [`shard::copy`] | yes | issue #8 | exact copies |
//! | [`layernorm_fwd`] / [`layernorm_bwd`] | yes | issue #8 | [`crate::reference::layernorm`] |
//! | [`softmax_fwd`] / [`softmax_bwd`] | yes | issue #8 | [`crate::reference::softmax`] |
//! | [`cross_entropy_fwd`] / [`cross_entropy_bwd`] | yes | issue #8 | [`crate::reference::cross_entropy`] |
//! | [`adamw_step`] | yes | issue #8 | [`crate::reference::adamw`] |

mod adamw;
pub mod bias;
mod bias_gelu;
mod cross_entropy;
mod gemm;
pub(crate) mod launch;
mod layernorm;
pub mod shard;
mod softmax;
mod validate;

pub use crate::backend::cpu::ops::adamw::AdamW;
pub use crate::backend::cpu::ops::gemm::Transpose;
pub use adamw::adamw_step;
pub use bias_gelu::{bias_gelu_bwd, bias_gelu_fwd};
pub use cross_entropy::{cross_entropy_bwd, cross_entropy_fwd};
pub use gemm::{gemm, gemm_epilogue, Epilogue, Gemm};
pub use layernorm::{layernorm_bwd, layernorm_fwd};
pub use softmax::{softmax_bwd, softmax_fwd};

use crate::error::Error;
use crate::stream::Stream;

pub(crate) fn unsupported(op: &'static str, stream: &Stream) -> Error {
    Error::Unsupported {
        op,
        backend: stream.device().kind().to_string(),
    }
}
