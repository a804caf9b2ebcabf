//! Pipeline parallelism: a model's layers cut into stages on `pp` ranks, micro-batches streamed
//! through them by a *schedule* that is plain data.
//!
//! - [`partition`]: layers to stages (even, or balanced by a cost per layer), virtual chunks.
//! - [`action`]: what one rank does next ([`Action`]) and where stages live ([`Placement`]).
//! - [`schedule`]: naive, GPipe, 1F1B, interleaved 1F1B and ZB-H1 as pure functions.
//! - [`simulate`]: runs a schedule against per-action costs: deadlock freedom, makespan,
//!   bubble, peak live activations.
//! - [`trace`]: timelines (Chrome trace JSON, SVG) of planned or measured steps.

pub mod action;
pub mod partition;
pub mod schedule;
pub mod simulate;
pub mod trace;

pub use action::{Action, ActionKind, Placement};
pub use schedule::{Schedule, ScheduleConfig, ScheduleKind};
pub use trace::{Lane, TraceSpan};
