//! The `ferrotron` command line. Subcommands grow with the issues; today: `check`.

use clap::{Parser, Subcommand, ValueEnum};
use ferrotron::check::{self, CheckReport};
use ferrotron::{BackendKind, Device};
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { backend, seed } => {
            let mut devices = Vec::new();
            let mut notes = Vec::new();
            if backend != BackendArg::Cuda {
                devices.push(Device::cpu());
            }
            if backend != BackendArg::Cpu {
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
