//! The pipeline simulator: runs a [`super::Schedule`] against per-action costs.
