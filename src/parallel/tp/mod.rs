//! Tensor parallelism (Megatron-style): a group of ranks shares every layer, weights split along
//! the hidden dimension and, with sequence parallelism, activations outside the split layers
//! split along the sequence (first) dimension.
//!
//! - [`mappings`]: the region mappings (`f`, `g`, scatter/gather along the last dimension,
//!   sequence-parallel scatter/gather/reduce-scatter along the first), forward and backward.

pub mod mappings;

pub use mappings::{
    copy_to_tp_region_bwd, copy_to_tp_region_fwd, gather_from_sp_region_bwd,
    gather_from_sp_region_fwd, gather_from_tp_region_bwd, gather_from_tp_region_fwd,
    reduce_from_tp_region_bwd, reduce_from_tp_region_fwd, reduce_scatter_to_sp_region_bwd,
    reduce_scatter_to_sp_region_fwd, scatter_to_sp_region_bwd, scatter_to_sp_region_fwd,
    scatter_to_tp_region_bwd, scatter_to_tp_region_fwd,
};
