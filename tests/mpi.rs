//! The MPI communicator across real processes: runs `ferrotron-mpi-check` (every collective
//! against the serial computation, bitwise; mismatches, timeouts and a failing peer as errors)
//! under `mpirun` with 2 and 4 processes. Skips (with the reason) where `mpirun` is missing,
//! unless `FERROTRON_REQUIRE_MPI=1`. No run may take longer than 120 s.
#![cfg(feature = "mpi")]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One `mpirun` at a time: the processes of two jobs would fight over the same few cores.
static SERIAL: Mutex<()> = Mutex::new(());

const LIMIT: Duration = Duration::from_secs(120);

fn mpirun() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join("mpirun"))
        .find(|p| p.is_file())
}

fn required() -> bool {
    std::env::var("FERROTRON_REQUIRE_MPI").is_ok_and(|v| v == "1")
}

/// Sends `sig` to the process group `pgid` (mpirun and the ranks it started).
fn kill_group(pgid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, "--", &format!("-{pgid}")])
        .status();
}

/// Runs `bin args` under `mpirun -np np` with a hard time limit; returns its stdout after
/// asserting success, or `None` (after printing why) when there is no mpirun.
fn run_mpi(np: usize, bin: &str, args: &[&str]) -> Option<String> {
    let Some(mpirun) = mpirun() else {
        let reason = "mpirun not found on PATH (apt-get install openmpi-bin libopenmpi-dev)";
        assert!(!required(), "FERROTRON_REQUIRE_MPI=1 but {reason}");
        println!("SKIP mpi np={np}: {reason}");
        return None;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut child = Command::new(&mpirun)
        .args(["--oversubscribe", "--allow-run-as-root", "-np"])
        .arg(np.to_string())
        .arg(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", mpirun.display()));
    let pgid = child.id();
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for mpirun") {
            break Some(st);
        }
        if t0.elapsed() > LIMIT {
            // mpirun forwards SIGTERM to its ranks; then make sure of it.
            kill_group(pgid, "-TERM");
            std::thread::sleep(Duration::from_secs(3));
            kill_group(pgid, "-KILL");
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (out_t.join().unwrap(), err_t.join().unwrap());
    println!("{stdout}");
    eprintln!("{stderr}");
    let status = status.unwrap_or_else(|| {
        panic!("mpirun -np {np} did not finish within {LIMIT:?} (killed); output above")
    });
    assert!(
        status.success(),
        "mpirun -np {np} failed ({status}); output above"
    );
    Some(stdout)
}

fn run_check(np: usize) {
    let t0 = Instant::now();
    let Some(stdout) = run_mpi(np, env!("CARGO_BIN_EXE_ferrotron-mpi-check"), &[]) else {
        return;
    };
    let closing = stdout
        .lines()
        .find(|l| l.contains(" passed, "))
        .unwrap_or_else(|| panic!("no closing `N passed, M failed` line from -np {np}"));
    let passed: usize = closing
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        passed > 50 && closing.contains(" passed, 0 failed"),
        "-np {np}: {closing}"
    );
    println!(
        "mpi np={np}: {closing} in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn mpi_check_with_2_processes() {
    run_check(2);
}

#[test]
fn mpi_check_with_4_processes() {
    run_check(4);
}

#[test]
fn bench_comm_runs_on_the_mpi_backend_under_mpirun() {
    let args = [
        "bench",
        "comm",
        "--op",
        "all_reduce",
        "--min",
        "1K",
        "--max",
        "64K",
        "--iters",
        "2",
    ];
    let Some(stdout) = run_mpi(2, env!("CARGO_BIN_EXE_ferrotron"), &args) else {
        return;
    };
    assert!(stdout.contains("backend mpi"), "{stdout}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    for r in rows {
        assert_eq!(
            r.split_whitespace().last(),
            Some("0"),
            "#wrong must be 0: {r}"
        );
    }
}
