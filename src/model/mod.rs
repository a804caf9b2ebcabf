//! Models built only from the parallel layers.
//!
//! - [`gpt`]: a small GPT (vocabulary-parallel embedding, tensor-parallel blocks, final LN,
//!   vocabulary-parallel head and loss) as pipeline stages.
//! - [`train`]: one training run on a dp x pp x tp mesh of CPU thread ranks.

pub mod gpt;
pub mod train;
