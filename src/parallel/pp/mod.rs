//! Pipeline parallelism: a model's layers cut into stages on `pp` ranks, micro-batches streamed
//! through them by a *schedule* that is plain data.
//!
//! - [`partition`]: layers to stages (even, or balanced by a cost per layer), virtual chunks.
//! - [`action`]: what one rank does next ([`Action`]) and where stages live ([`Placement`]).
//! - [`schedule`]: naive, GPipe, 1F1B, interleaved 1F1B and ZB-H1 as pure functions.
//! - [`mod@simulate`]: runs a schedule against per-action costs: deadlock freedom, makespan,
//!   bubble, peak live activations.
//! - [`stage`]: what the executor runs ([`PipelineStage`], [`PipelineLoss`]); [`dense`] is a
//!   concrete stage (dense GeLU layers, split backward) and cross-entropy loss; [`blocks`] a
//!   stage of tensor-parallel transformer blocks.
//! - [`executor`]: runs a rank's schedule over send/recv on dedicated p2p streams.
//! - [`trace`]: timelines (Chrome trace JSON, SVG) of planned or measured steps.

pub mod action;
pub mod blocks;
pub mod dense;
pub mod executor;
pub mod partition;
pub mod schedule;
pub mod simulate;
pub mod stage;
pub mod trace;

pub use action::{Action, ActionKind, Placement};
pub use executor::{run_step, Boundary, ExecOptions, PipelineStreams, StepReport};
pub use schedule::{build, Schedule, ScheduleConfig, ScheduleKind, MAX_STAGE_PASSES};
pub use simulate::{simulate, Costs, RankReport, SimReport, StageCosts};
pub use stage::{PipelineLoss, PipelineStage, Saved};
pub use trace::{chrome_trace_json, svg_timeline, write_chrome_trace, write_svg, Lane, TraceSpan};
