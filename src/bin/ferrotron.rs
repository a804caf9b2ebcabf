//! The `ferrotron` command line: `check` (every op vs its reference), `bench comm` (nccl-tests
//! style collective table).

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
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
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
    },
}

fn bench_comm(what: BenchWhat) -> Result<(), String> {
    let BenchWhat::Comm {
        op,
        ranks,
        min,
        max,
        factor,
        dtype,
        iters,
        warmup,
    } = what;
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
            println!(
                "# baseline: single-thread memcpy of {} bytes: {:.2} GB/s (same run)",
                cfg.max_bytes,
                ferrotron::bench::memcpy_gbps(cfg.max_bytes)
            );
        }
        let wrong: usize = rows.iter().map(|r| r.wrong).sum();
        return if wrong == 0 {
            Ok(())
        } else {
            Err(format!("{wrong} wrong elements"))
        };
    }
    let rows = launch(ranks, BackendKind::Cpu, |ctx| {
        comm::run_rank(&ctx.device, &ctx.comm, &cfg)
    })
    .map_err(|e| e.to_string())?;
    print!("{}", comm::table(&cfg, ranks, "threads", &rows[0]));
    let wrong: usize = rows.iter().flatten().map(|r| r.wrong).sum();
    println!(
        "# baseline: single-thread memcpy of {} bytes: {:.2} GB/s (same run)",
        cfg.max_bytes,
        ferrotron::bench::memcpy_gbps(cfg.max_bytes)
    );
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
