//! Cutting a stack of layers into pipeline stages.
