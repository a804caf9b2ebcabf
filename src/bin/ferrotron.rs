//! The `ferrotron` command line: `check` (every op vs its reference), `bench comm` (nccl-tests
//! style collective table), `profile` (emulator counters), `tp` (a tensor-parallel block),
//! `schedule` (the pipeline simulator) and `pipeline` (the pipeline executor vs the simulator).

use clap::{Parser, Subcommand, ValueEnum};
use ferrotron::bench::comm::{self, BenchOp, CommBench};
use ferrotron::check::{self, CheckReport};
use ferrotron::comm::launch;
use ferrotron::{BackendKind, DType, Device};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ferrotron",
    version,
    about = "Model-parallel building blocks, checked against CPU references"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum BackendArg {
    /// Every backend available on this machine.
    All,
    /// The CPU backend.
    Cpu,
    /// CUDA GPU 0.
    Cuda,
    /// Emulated GPU 0: the CUDA kernels' PTX run by ptx-emu with sanitizer checks.
    Emu,
}

#[derive(Subcommand)]
enum Command {
    /// Run every operator on every available backend against its f64 CPU reference and print
    /// a table; exits non-zero if any row fails.
    Check {
        /// Which backend(s) to check.
        #[arg(long, value_enum, default_value_t = BackendArg::All)]
        backend: BackendArg,
        /// Seed for the random inputs.
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
    },
    /// Run a kernel-backed op on the PTX emulator and print exact Nsight-Compute-like counters
    /// (instructions, sectors per request, bank conflicts, bytes, FLOPs) with roofline
    /// estimates for H100 SXM and A100 SXM.
    Profile {
        /// bias_gelu_fwd or bias_gelu_bwd.
        #[arg(long, default_value = "bias_gelu_fwd")]
        op: String,
        /// Rows (tokens).
        #[arg(long, default_value_t = 256)]
        rows: usize,
        /// Columns (hidden / tp).
        #[arg(long, default_value_t = 1024)]
        cols: usize,
        /// f32 or bf16.
        #[arg(long, default_value = "bf16")]
        dtype: String,
        /// Seed of the inputs.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// One tensor-parallel transformer block, forward + backward on CPU thread ranks: the
    /// difference to tp=1, time per step for tp=1 and tp=N, and collective bytes per step
    /// against Megatron's formula.
    Tp {
        /// Tensor-parallel size.
        #[arg(long, default_value_t = 4)]
        tp: usize,
        /// Hidden size.
        #[arg(long, default_value_t = 256)]
        hidden: usize,
        /// Attention heads.
        #[arg(long, default_value_t = 8)]
        heads: usize,
        /// Sequence length (tokens).
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Sequence parallelism.
        #[arg(long)]
        sp: bool,
        /// f32 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Timed steps.
        #[arg(long, default_value_t = 3)]
        steps: usize,
    },
    /// Simulate a pipeline schedule: makespan, bubble (with the closed form) and peak live
    /// activations per rank; optionally draw it (SVG) and write a Chrome/Perfetto trace.
    Schedule {
        /// Pipeline-parallel size.
        #[arg(long, default_value_t = 4)]
        pp: usize,
        /// Micro-batches per step.
        #[arg(long, default_value_t = 8)]
        microbatches: usize,
        /// naive, gpipe, 1f1b, interleaved or zb-h1.
        #[arg(long, default_value = "1f1b")]
        schedule: String,
        /// Model chunks per rank (interleaved only).
        #[arg(long, default_value_t = 1)]
        chunks: usize,
        /// Forward cost per stage.
        #[arg(long, default_value_t = 1.0)]
        forward: f64,
        /// Backward cost per stage (input and weight halves split evenly).
        #[arg(long, default_value_t = 2.0)]
        backward: f64,
        /// Latency of one transfer.
        #[arg(long, default_value_t = 0.0)]
        p2p: f64,
        /// Recompute every stage's forward before its backward.
        #[arg(long)]
        recompute: bool,
        /// Write the timeline as SVG here.
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
        /// Write a Chrome/Perfetto trace (JSON) here.
        #[arg(long)]
        trace: Option<std::path::PathBuf>,
    },
    /// Run pipeline schedules on CPU thread ranks (a stack of dense GeLU layers): the measured
    /// step time next to the simulator's makespan for the per-action costs measured in the
    /// same step.
    Pipeline {
        /// Pipeline-parallel size.
        #[arg(long, default_value_t = 4)]
        pp: usize,
        /// Micro-batches per step.
        #[arg(long, default_value_t = 8)]
        microbatches: usize,
        /// A schedule name, or `all`.
        #[arg(long, default_value = "all")]
        schedule: String,
        /// Model chunks per rank for the interleaved schedule.
        #[arg(long, default_value_t = 2)]
        chunks: usize,
        /// Dense layers in the model.
        #[arg(long, default_value_t = 16)]
        layers: usize,
        /// Layer width.
        #[arg(long, default_value_t = 256)]
        hidden: usize,
        /// Rows per micro-batch.
        #[arg(long, default_value_t = 64)]
        rows: usize,
        /// f32 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Timed steps per schedule.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Recompute every stage's forward before its backward.
        #[arg(long)]
        recompute: bool,
        /// Write the measured and simulated timelines of the (last) schedule as SVG here
        /// (`<path>` measured, `<path>.sim.svg` simulated).
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
        /// Write the measured trace of the (last) schedule as Chrome/Perfetto JSON here.
        #[arg(long)]
        trace: Option<std::path::PathBuf>,
    },
    /// Train a small GPT with data, pipeline and tensor parallelism on CPU thread ranks (the
    /// main job): progress with loss and tokens/s, then a summary (loss, time per step, bubble,
    /// bytes per group, memory per rank) and optionally the loss curve and a check against the
    /// same run on one rank.
    Train {
        /// Data-parallel size.
        #[arg(long, default_value_t = 2)]
        dp: usize,
        /// Pipeline-parallel size.
        #[arg(long, default_value_t = 2)]
        pp: usize,
        /// Tensor-parallel size.
        #[arg(long, default_value_t = 2)]
        tp: usize,
        /// Optimizer steps.
        #[arg(long, default_value_t = 200)]
        steps: usize,
        /// Micro-batches (sequences) per data-parallel rank per step.
        #[arg(long, default_value_t = 4)]
        microbatches: usize,
        /// Pipeline schedule: naive, gpipe, 1f1b, interleaved or zb-h1.
        #[arg(long, default_value = "1f1b")]
        schedule: String,
        /// Model chunks per pipeline rank (interleaved).
        #[arg(long, default_value_t = 1)]
        chunks: usize,
        /// Transformer blocks.
        #[arg(long, default_value_t = 4)]
        layers: usize,
        /// AdamW learning rate.
        #[arg(long, default_value_t = 3e-3)]
        lr: f32,
        /// Write the loss curve (SVG) here.
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
        /// Also run the same training on one rank and report the largest loss difference.
        #[arg(long)]
        verify: bool,
    },
    /// Generate the CUDA C kernel of a fused elementwise expression (the code generator) and,
    /// with --check, run it on the PTX emulator against the f64 evaluator (needs nvcc:
    /// FERROTRON_NVCC).
    Codegen {
        /// The expression, e.g. "gelu(x + b) * s".
        #[arg(long)]
        expr: String,
        /// Inputs as name:dtype:bcast (dtype f32|bf16, bcast full|row|col|scalar), in order.
        #[arg(long = "input", default_values_t = ["x:bf16:full".to_string(), "b:bf16:row".to_string(), "s:f32:scalar".to_string()])]
        inputs: Vec<String>,
        /// Output dtype (f32 or bf16).
        #[arg(long, default_value = "bf16")]
        out: String,
        /// What to emit (only cuda).
        #[arg(long, default_value = "cuda")]
        emit: String,
        /// Run on the emulator against the evaluator.
        #[arg(long)]
        check: bool,
        /// Rows for --check.
        #[arg(long, default_value_t = 7)]
        rows: usize,
        /// Columns for --check.
        #[arg(long, default_value_t = 129)]
        cols: usize,
    },
    /// Print the dp x pp x tp mesh: every rank's coordinates and its tp, dp, pp and embedding
    /// groups (tp fastest, then dp, then pp, as Megatron lays them out).
    Mesh {
        /// Data-parallel size.
        #[arg(long, default_value_t = 2)]
        dp: usize,
        /// Pipeline-parallel size.
        #[arg(long, default_value_t = 2)]
        pp: usize,
        /// Tensor-parallel size.
        #[arg(long, default_value_t = 2)]
        tp: usize,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Every kernel-backed op on the emulator: bytes moved vs ideal, sectors per request, bank
    /// conflicts, H100 roofline estimate (no GPU timing without a GPU). With `--gpu`: timed on
    /// CUDA device 0 instead, against cuBLASLt (GEMM) and a device-to-device copy (elementwise).
    Kernels {
        /// Smaller shapes (seconds instead of tens of seconds).
        #[arg(long)]
        quick: bool,
        /// Time the ops on GPU 0 (CUDA events) against cuBLASLt / a device-to-device copy.
        /// Without a GPU: prints why and exits 0 (non-zero with FERROTRON_REQUIRE_GPU=1).
        #[arg(long)]
        gpu: bool,
    },
    /// Collectives, as an nccl-tests table, with a memcpy baseline measured in the same run.
    Comm {
        /// all_reduce, all_gather, reduce_scatter or broadcast.
        #[arg(long, default_value = "all_reduce")]
        op: String,
        /// Number of ranks (threads; under mpirun the processes are the ranks).
        #[arg(long, default_value_t = 4)]
        ranks: usize,
        /// Smallest size (bytes; K/M/G suffixes).
        #[arg(long, default_value = "1K")]
        min: String,
        /// Largest size.
        #[arg(long, default_value = "256M")]
        max: String,
        /// Size multiplier between rows.
        #[arg(long, default_value_t = 4)]
        factor: usize,
        /// f32 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Timed iterations per size (at most 5 above 16 MiB).
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// Untimed iterations per size.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// threads (CPU ranks), peer-emu (the peer kernels on emulated GPUs: slow, keep the
        /// sizes small) or peer-gpu (the peer kernels on CUDA GPUs: one rank per GPU when there
        /// are enough, else every rank on GPU 0). Under mpirun the MPI backend is used.
        #[arg(long, default_value = "threads")]
        backend: String,
    },
}

/// `bench kernels --gpu`: the GPU table, or why there is none (an error only when
/// `FERROTRON_REQUIRE_GPU=1`).
fn bench_kernels_gpu(quick: bool) -> Result<(), String> {
    if let Some(why) = ferrotron::backend::cuda::unavailable_reason() {
        let msg = format!("bench kernels --gpu: no GPU: {why}");
        if std::env::var("FERROTRON_REQUIRE_GPU").as_deref() == Ok("1") {
            return Err(format!("{msg} (FERROTRON_REQUIRE_GPU=1)"));
        }
        println!("{msg}");
        return Ok(());
    }
    let rows = ferrotron::bench::kernels_gpu::bench_gpu(quick).map_err(|e| e.to_string())?;
    print!("{}", ferrotron::bench::kernels_gpu::table_gpu(&rows));
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.check.is_some_and(|c| !c.pass))
        .map(|r| r.name.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "bench kernels --gpu: cuBLASLt and our GEMM disagree on: {}",
            failed.join(", ")
        ))
    }
}

fn bench_comm(what: BenchWhat) -> Result<(), String> {
    let (op, ranks, min, max, factor, dtype, iters, warmup, backend) = match what {
        BenchWhat::Kernels { quick, gpu: true } => return bench_kernels_gpu(quick),
        BenchWhat::Kernels { quick, gpu: false } => {
            let rows = ferrotron::bench::kernels::bench(quick).map_err(|e| e.to_string())?;
            print!("{}", ferrotron::bench::kernels::table(&rows));
            return Ok(());
        }
        BenchWhat::Comm {
            op,
            ranks,
            min,
            max,
            factor,
            dtype,
            iters,
            warmup,
            backend,
        } => (op, ranks, min, max, factor, dtype, iters, warmup, backend),
    };
    let op = BenchOp::parse(&op).ok_or(format!("unknown --op {op}"))?;
    let dtype = match dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => return Err(format!("unsupported --dtype {other} (f32 or bf16)")),
    };
    let size = |s: &str| ferrotron::bench::parse_size(s).ok_or(format!("bad size {s}"));
    let cfg = CommBench {
        op,
        dtype,
        min_bytes: size(&min)?,
        max_bytes: size(&max)?,
        factor,
        iters,
        warmup,
    };
    // Under mpirun (and built with `--features mpi`) the ranks are the MPI processes.
    #[cfg(feature = "mpi")]
    if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some() || std::env::var_os("PMI_SIZE").is_some()
    {
        let (rank, world, rows) = ferrotron::comm::mpi::launch(Default::default(), |ctx| {
            Ok((
                ctx.rank,
                ctx.world_size,
                comm::run_rank(&ctx.device, &ctx.comm, &cfg)?,
            ))
        })
        .map_err(|e| e.to_string())?;
        if rank == 0 {
            print!("{}", comm::table(&cfg, world, "mpi", &rows));
            print!("{}", comm_baselines(&cfg, world));
        }
        let wrong: usize = rows.iter().map(|r| r.wrong).sum();
        return if wrong == 0 {
            Ok(())
        } else {
            Err(format!("{wrong} wrong elements"))
        };
    }
    match backend.as_str() {
        "threads" => {}
        "peer-emu" | "peer-gpu" => return bench_comm_peer(&cfg, ranks, &backend),
        other => {
            return Err(format!(
                "unknown --backend {other} (threads, peer-emu, peer-gpu)"
            ))
        }
    }
    let rows = launch(ranks, BackendKind::Cpu, |ctx| {
        comm::run_rank(&ctx.device, &ctx.comm, &cfg)
    })
    .map_err(|e| e.to_string())?;
    print!("{}", comm::table(&cfg, ranks, "threads", &rows[0]));
    let wrong: usize = rows.iter().flatten().map(|r| r.wrong).sum();
    print!("{}", comm_baselines(&cfg, ranks));
    println!(
        "# out of bounds values : {wrong} {}",
        if wrong == 0 { "OK" } else { "FAILED" }
    );
    if wrong == 0 {
        Ok(())
    } else {
        Err(format!("{wrong} wrong elements"))
    }
}

/// The host collectives' baselines, measured after the table (same run): single-thread and
/// all-cores memcpy of the largest size, and the roofline of the op from the memory's read and
/// streaming-write rates.
fn comm_baselines(cfg: &CommBench, ranks: usize) -> String {
    let bytes = cfg.max_bytes;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rates = ferrotron::bench::memory_rates(bytes, cores);
    let (reads, writes) = comm::minimal_traffic(cfg.op, ranks);
    format!(
        "# baseline: single-thread memcpy of {bytes} bytes: {:.2} GB/s (same run)\n\
         # baseline: {cores}-thread memcpy of {bytes} bytes: {:.2} GB/s (all cores at once)\n\
         # roofline: memory read {:.2} GB/s, streaming write {:.2} GB/s ({cores} threads, same run); \
         {:?} on {ranks} ranks reads {reads}x and writes {writes}x its size at least: \
         busbw <= {:.2} GB/s\n",
        ferrotron::bench::memcpy_gbps(bytes),
        ferrotron::bench::memcpy_parallel_gbps(bytes, cores),
        rates.read_gbps,
        rates.write_gbps,
        cfg.op,
        comm::roofline_busbw(cfg.op, ranks, rates),
    )
}

/// `bench comm --backend peer-emu|peer-gpu`: the peer communicator's kernels on `ranks`
/// emulated GPUs or CUDA GPUs, with a device-to-device copy on the first device as the baseline
/// (same run). Without a GPU, `peer-gpu` prints why and succeeds unless
/// `FERROTRON_REQUIRE_GPU=1`.
fn bench_comm_peer(cfg: &CommBench, ranks: usize, backend: &str) -> Result<(), String> {
    use ferrotron::comm::peer::{self, PeerConfig};
    let devices: Vec<Device> = if backend == "peer-gpu" {
        if let Some(why) = ferrotron::backend::cuda::unavailable_reason() {
            if std::env::var("FERROTRON_REQUIRE_GPU").as_deref() == Ok("1") {
                return Err(format!("bench comm --backend peer-gpu: no GPU: {why}"));
            }
            println!("bench comm --backend peer-gpu: no GPU: {why}");
            return Ok(());
        }
        let gpus = ferrotron::backend::cuda::device_count().map_err(|e| e.to_string())?;
        (0..ranks)
            .map(|r| Device::cuda(if gpus >= ranks { r } else { 0 }))
            .collect::<ferrotron::Result<_>>()
            .map_err(|e| e.to_string())?
    } else {
        (0..ranks)
            .map(Device::emu)
            .collect::<ferrotron::Result<_>>()
            .map_err(|e| e.to_string())?
    };
    // Staging large enough for the largest all-gather block and reduce-scatter input.
    let config = PeerConfig {
        staging_bytes: cfg.max_bytes.clamp(1 << 20, 1 << 30),
        ..PeerConfig::default()
    };
    let rows = peer::launch(&devices, config, |ctx| {
        comm::run_rank(&ctx.device, &ctx.comm, cfg)
    })
    .map_err(|e| e.to_string())?;
    let label = format!("{backend} ({})", devices[0].label());
    print!("{}", comm::table(cfg, ranks, &label, &rows[0]));
    let copy = comm::device_copy_gbps(&devices[0], cfg.max_bytes, cfg.iters.clamp(2, 20))
        .map_err(|e| e.to_string())?;
    println!(
        "# baseline: device-to-device copy of {} bytes on {}: {copy:.2} GB/s (same run)",
        cfg.max_bytes,
        devices[0].label()
    );
    let wrong: usize = rows.iter().flatten().map(|r| r.wrong).sum();
    println!(
        "# out of bounds values : {wrong} {}",
        if wrong == 0 { "OK" } else { "FAILED" }
    );
    if wrong == 0 {
        Ok(())
    } else {
        Err(format!("{wrong} wrong elements"))
    }
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        other => Err(format!("unsupported --dtype {other} (f32 or bf16)")),
    }
}

fn write_timelines(
    spans: &[ferrotron::parallel::pp::TraceSpan],
    title: &str,
    svg: Option<&std::path::Path>,
    trace: Option<&std::path::Path>,
) -> Result<(), String> {
    use ferrotron::parallel::pp::{write_chrome_trace, write_svg};
    if let Some(p) = svg {
        write_svg(p, spans, title).map_err(|e| e.to_string())?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = trace {
        write_chrome_trace(p, spans, title).map_err(|e| e.to_string())?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn schedule_cmd(
    pp: usize,
    microbatches: usize,
    schedule: &str,
    chunks: usize,
    costs: (f64, f64, f64),
    recompute: bool,
    svg: Option<&std::path::Path>,
    trace: Option<&std::path::Path>,
) -> Result<(), String> {
    use ferrotron::parallel::pp::simulate::Costs;
    use ferrotron::parallel::pp::{ScheduleConfig, ScheduleKind};
    let kind: ScheduleKind = schedule
        .parse()
        .map_err(|e: ferrotron::Error| e.to_string())?;
    let mut cfg = ScheduleConfig::new(kind, pp, microbatches, chunks);
    if recompute {
        cfg = cfg.recompute_all();
    }
    let (f, b, p2p) = costs;
    let c = Costs::uniform(pp.saturating_mul(chunks), f, b / 2.0, b / 2.0, p2p);
    let (text, report) =
        ferrotron::bench::pp::schedule_table(&cfg, &c).map_err(|e| e.to_string())?;
    print!("{text}");
    let title = format!("{kind} pp={pp} m={microbatches} v={chunks} (simulated)");
    write_timelines(&report.spans, &title, svg, trace)
}

#[allow(clippy::too_many_arguments)]
fn pipeline_cmd(
    pp: usize,
    microbatches: usize,
    schedule: &str,
    chunks: usize,
    shape: (usize, usize, usize),
    dtype: &str,
    steps: usize,
    recompute: bool,
    svg: Option<&std::path::Path>,
    trace: Option<&std::path::Path>,
) -> Result<(), String> {
    use ferrotron::parallel::pp::ScheduleKind;
    let kinds = if schedule == "all" {
        ScheduleKind::ALL.to_vec()
    } else {
        vec![schedule
            .parse::<ScheduleKind>()
            .map_err(|e| e.to_string())?]
    };
    let (layers, hidden, rows) = shape;
    let cfg = ferrotron::bench::pp::PipelineBench {
        kinds,
        pp,
        microbatches,
        chunks,
        layers,
        hidden,
        rows,
        dtype: parse_dtype(dtype)?,
        steps,
        recompute,
    };
    let rows = ferrotron::bench::pp::bench(&cfg).map_err(|e| e.to_string())?;
    print!("{}", ferrotron::bench::pp::pipeline_table(&cfg, &rows));
    if let Some(r) = rows.last() {
        let title = format!("{} pp={pp} m={microbatches} (measured)", r.kind);
        write_timelines(&r.spans, &title, svg, trace)?;
        if let Some(p) = svg {
            let sim = p.with_extension("sim.svg");
            let title = format!(
                "{} pp={pp} m={microbatches} (simulated, measured costs)",
                r.kind
            );
            write_timelines(&r.sim_spans, &title, Some(&sim), None)?;
        }
    }
    Ok(())
}

struct TrainArgs {
    dp: usize,
    pp: usize,
    tp: usize,
    steps: usize,
    microbatches: usize,
    schedule: String,
    chunks: usize,
    layers: usize,
    lr: f32,
    plot: Option<std::path::PathBuf>,
    verify: bool,
}

fn train_cmd(a: TrainArgs) -> Result<(), String> {
    use ferrotron::model::gpt::GptConfig;
    use ferrotron::model::train::{train, TrainConfig};
    use indicatif::{ProgressBar, ProgressStyle};
    let cfg = TrainConfig {
        model: GptConfig {
            layers: a.layers,
            ..GptConfig::tiny()
        },
        dp: a.dp,
        pp: a.pp,
        tp: a.tp,
        chunks: a.chunks,
        microbatches: a.microbatches,
        schedule: a
            .schedule
            .parse()
            .map_err(|e: ferrotron::Error| e.to_string())?,
        steps: a.steps,
        lr: a.lr,
        data_seed: 7,
    };
    let tokens = (cfg.dp * cfg.microbatches * cfg.model.seq) as f64;
    let bar = |label: &str| {
        let pb = ProgressBar::new(cfg.steps as u64);
        pb.set_style(
            ProgressStyle::with_template(&format!(
                "{label} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    };
    let pb = bar(&format!("train dp{} pp{} tp{}", cfg.dp, cfg.pp, cfg.tp));
    let report = train(&cfg, &|_, loss, secs| {
        pb.set_message(format!("loss {loss:.4}  {:.0} tokens/s", tokens / secs));
        pb.inc(1);
    })
    .map_err(|e| e.to_string())?;
    pb.finish();
    let verify = if a.verify {
        let one = TrainConfig {
            dp: 1,
            pp: 1,
            tp: 1,
            chunks: 1,
            schedule: ferrotron::parallel::pp::ScheduleKind::OneFOneB,
            microbatches: cfg.dp * cfg.microbatches,
            ..cfg.clone()
        };
        let pb1 = bar("verify on one rank");
        let r = train(&one, &|_, _, _| pb1.inc(1)).map_err(|e| e.to_string())?;
        pb1.finish();
        Some(r)
    } else {
        None
    };
    print!(
        "{}",
        ferrotron::bench::train::summary(&cfg, &report, verify.as_ref())
    );
    if let Some(p) = a.plot {
        let mut curves: Vec<(&str, &[f64])> = vec![("parallel", &report.losses)];
        if let Some(v) = &verify {
            curves.push(("one rank", &v.losses));
        }
        let title = format!(
            "GPT loss, dp {} x pp {} x tp {} ({})",
            cfg.dp, cfg.pp, cfg.tp, cfg.schedule
        );
        std::fs::write(&p, ferrotron::bench::train::loss_svg(&curves, &title))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        println!("wrote {}", p.display());
    }
    if let Some(v) = &verify {
        let worst = report
            .losses
            .iter()
            .zip(&v.losses)
            .map(|(a, b)| (a - b).abs() / b.abs())
            .fold(0.0, f64::max);
        if worst.is_nan() || worst >= 1e-3 {
            return Err(format!(
                "the parallel run's loss differs from one rank's by {worst:.2e}"
            ));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Train {
            dp,
            pp,
            tp,
            steps,
            microbatches,
            schedule,
            chunks,
            layers,
            lr,
            plot,
            verify,
        } => match train_cmd(TrainArgs {
            dp,
            pp,
            tp,
            steps,
            microbatches,
            schedule,
            chunks,
            layers,
            lr,
            plot,
            verify,
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferrotron train: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Codegen {
            expr,
            inputs,
            out,
            emit,
            check,
            rows,
            cols,
        } => {
            let out = match out.as_str() {
                "f32" => codegen::expr::Dtype::F32,
                "bf16" => codegen::expr::Dtype::Bf16,
                o => {
                    eprintln!("ferrotron codegen: --out {o} (f32 or bf16)");
                    return ExitCode::FAILURE;
                }
            };
            if emit != "cuda" {
                eprintln!("ferrotron codegen: --emit {emit} (only cuda)");
                return ExitCode::FAILURE;
            }
            match ferrotron::bench::codegen::codegen(
                &expr,
                &inputs,
                out,
                check.then_some((rows, cols)),
            ) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ferrotron codegen: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Mesh { dp, pp, tp } => match ferrotron::parallel::mesh::Layout::new(dp, pp, tp) {
            Ok(l) => {
                print!("{}", l.describe());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferrotron mesh: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Schedule {
            pp,
            microbatches,
            schedule,
            chunks,
            forward,
            backward,
            p2p,
            recompute,
            svg,
            trace,
        } => match schedule_cmd(
            pp,
            microbatches,
            &schedule,
            chunks,
            (forward, backward, p2p),
            recompute,
            svg.as_deref(),
            trace.as_deref(),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferrotron schedule: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Pipeline {
            pp,
            microbatches,
            schedule,
            chunks,
            layers,
            hidden,
            rows,
            dtype,
            steps,
            recompute,
            svg,
            trace,
        } => match pipeline_cmd(
            pp,
            microbatches,
            &schedule,
            chunks,
            (layers, hidden, rows),
            &dtype,
            steps,
            recompute,
            svg.as_deref(),
            trace.as_deref(),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferrotron pipeline: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Tp {
            tp,
            hidden,
            heads,
            seq,
            sp,
            dtype,
            steps,
        } => {
            let dtype = match dtype.as_str() {
                "f32" => DType::F32,
                "bf16" => DType::BF16,
                other => {
                    eprintln!("ferrotron tp: unsupported --dtype {other} (f32 or bf16)");
                    return ExitCode::FAILURE;
                }
            };
            let cfg = ferrotron::bench::tp::TpBench {
                tp,
                hidden,
                heads,
                seq,
                sequence_parallel: sp,
                dtype,
                steps,
            };
            match ferrotron::bench::tp::bench(&cfg) {
                Ok(r) => {
                    print!("{}", r.text);
                    if r.diffs.iter().all(|c| c.pass) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("ferrotron tp: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Profile {
            op,
            rows,
            cols,
            dtype,
            seed,
        } => {
            let dtype = match dtype.as_str() {
                "f32" => DType::F32,
                "bf16" => DType::BF16,
                other => {
                    eprintln!("ferrotron profile: unsupported --dtype {other} (f32 or bf16)");
                    return ExitCode::FAILURE;
                }
            };
            match ferrotron::bench::emu::profile(&op, rows, cols, dtype, seed) {
                Ok(p) => {
                    print!("{}", p.report());
                    if p.check.iter().all(|(_, c)| c.pass) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("ferrotron profile: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bench { what } => match bench_comm(what) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferrotron bench: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { backend, seed } => {
            let mut devices = Vec::new();
            let mut notes = Vec::new();
            if backend == BackendArg::All || backend == BackendArg::Cpu {
                devices.push(Device::cpu());
            }
            if backend == BackendArg::All || backend == BackendArg::Emu {
                if ferrotron::kernels::kernels_built() {
                    match Device::new(BackendKind::Emu, 0) {
                        Ok(d) => devices.push(d),
                        Err(e) => {
                            eprintln!("ferrotron check: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                } else if backend == BackendArg::Emu {
                    eprintln!(
                        "ferrotron check: the kernels were not built (no nvcc at build time: run scripts/install-cuda-toolchain.sh and rebuild)"
                    );
                    return ExitCode::FAILURE;
                } else {
                    notes.push(
                        "emu: not checked: the kernels were not built (no nvcc at build time)"
                            .to_string(),
                    );
                }
            }
            if backend == BackendArg::All || backend == BackendArg::Cuda {
                match Device::new(BackendKind::Cuda, 0) {
                    Ok(d) => devices.push(d),
                    Err(e) if backend == BackendArg::Cuda => {
                        eprintln!("ferrotron check: {e}");
                        return ExitCode::FAILURE;
                    }
                    Err(e) => notes.push(format!("cuda: not checked: {e}")),
                }
            }
            let report: CheckReport = check::run(&devices, seed);
            print!("{}", report.table());
            for n in notes.iter().chain(report.notes.iter()) {
                println!("note: {n}");
            }
            let (pass, fail) = report.counts();
            println!("{pass} passed, {fail} failed");
            if fail == 0 && pass > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
