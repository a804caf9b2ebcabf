//! Compiles every `kernels/**/*.cu` with nvcc and embeds the results (see `src/kernels/mod.rs`).
//!
//! For each kernel source `kernels/<family>/<name>.cu` it runs nvcc twice, in parallel with the
//! other sources (at most `NUM_JOBS` nvcc processes at a time):
//! - `--fatbin` with sm_80 and sm_90a SASS plus compute_80 PTX, for real GPUs, into
//!   `OUT_DIR/<family>_<name>.fatbin`;
//! - `--ptx -arch=sm_80`, for the PTX emulator, into `OUT_DIR/<family>_<name>.ptx`.
//!
//! nvcc's stderr (with `-Xptxas -v`: registers, spills and shared memory per kernel) goes to
//! `OUT_DIR/<family>_<name>.log`; a summary with timings goes to `OUT_DIR/kernels_build.log`.
//! The embedded list is written to `OUT_DIR/kernel_images.rs`. A source whose inputs (its text,
//! every header under `kernels/`, the flags, nvcc) are unchanged since its last successful
//! compilation (`OUT_DIR/<family>_<name>.stamp`) is not compiled again.
//!
//! Generated sources (issue #10): before compiling, the code generator (`crates/codegen`, its
//! `variants` list) writes `OUT_DIR/generated/`:
//! - `ft_epilogues.cuh`: the GEMM epilogue functors and `ft_gemm_entries.cuh`: the GEMM entry
//!   points, both included by `kernels/gemm/gemm.cu` (the directory is on nvcc's include path);
//! - `fused.cu`: the shipped fused elementwise kernels, compiled like a kernel source into the
//!   image `generated/fused` (listed in `GENERATED_IMAGES`, apart from the `kernels/` images).
//!
//! A source's stamp covers the generated headers it names and a generated source's own text, so
//! a changed variant recompiles what uses it (and only that).
//!
//! nvcc is looked for, in order: `$FERROTRON_NVCC` (authoritative when set), the cache that
//! `scripts/install-cuda-toolchain.sh` fills (`$FERROTRON_CUDA_CACHE`, else
//! `${XDG_CACHE_HOME:-$HOME/.cache}/ferrotron/cuda-13.0`), then `nvcc` on `PATH`.
//! Without nvcc the crate still builds, with no kernel images and one warning; with
//! `FERROTRON_REQUIRE_KERNELS=1` a missing nvcc or a kernel that fails to compile fails the build.
//!
//! Dependencies: std and the code generator (CUDA C emission only, no emulator).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Flags for the fatbin that real GPUs load (A100-class SASS, H100 SASS with the `a` features,
/// and compute_80 PTX so that newer GPUs can JIT it).
const FATBIN_FLAGS: &[&str] = &[
    "--fatbin",
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_80,code=compute_80",
    "-Xptxas",
    "-v",
];

/// Flags for the PTX the emulator runs (the same PTX as the fatbin's compute_80 entry).
const PTX_FLAGS: &[&str] = &["--ptx", "-arch=sm_80"];

/// Flags common to both.
const COMMON_FLAGS: &[&str] = &["-O3", "-std=c++17"];

/// Environment variables that change what this script does.
const ENV_VARS: &[&str] = &[
    "FERROTRON_NVCC",
    "FERROTRON_CUDA_CACHE",
    "FERROTRON_REQUIRE_KERNELS",
    "HOME",
    "XDG_CACHE_HOME",
];

/// One kernel source file.
struct Source {
    /// Path relative to `kernels/` without `.cu`, with `/` separators: `elementwise/bias_gelu`.
    name: String,
    /// `name` with `/` replaced by `_`: the stem of every output file.
    stem: String,
    /// Absolute path of the `.cu` file.
    path: PathBuf,
    /// Written by the code generator into `OUT_DIR/generated/` (not a file under `kernels/`).
    generated: bool,
}

/// What one nvcc invocation produced.
struct JobResult {
    ok: bool,
    command: String,
    stderr: String,
    elapsed: Duration,
}

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let kernels_dir = manifest_dir.join("kernels");
    let include_dir = kernels_dir.join("include");
    let gen_dir = out_dir.join("generated");

    println!("cargo:rerun-if-changed=build.rs");
    for var in ENV_VARS {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let mut sources = Vec::new();
    let mut headers = Vec::new();
    if kernels_dir.is_dir() {
        watch_and_collect(&kernels_dir, &kernels_dir, &mut sources, &mut headers);
    }
    sources.sort_by(|a, b| a.name.cmp(&b.name));

    let require = env_flag("FERROTRON_REQUIRE_KERNELS");
    let generated_headers = match generate(&gen_dir, &mut sources) {
        Ok(h) => h,
        Err(why) => {
            let msg = format!("the code generator failed: {why}");
            if require {
                panic!("FERROTRON_REQUIRE_KERNELS is set and {msg}");
            }
            println!("cargo:warning={msg}");
            Vec::new()
        }
    };
    let images_rs = out_dir.join("kernel_images.rs");

    let nvcc = match find_nvcc() {
        Ok(nvcc) => nvcc,
        Err(why) => {
            let msg = format!(
                "CUDA kernels were not built: {why}. The crate works without them (CPU backend), \
                 but the CUDA backend and the PTX emulator have no kernels. Fix: run \
                 scripts/install-cuda-toolchain.sh (or set FERROTRON_NVCC=/path/to/nvcc), then \
                 rebuild."
            );
            if require {
                panic!("FERROTRON_REQUIRE_KERNELS is set and {msg}");
            }
            println!("cargo:warning={msg}");
            write_images_rs(&images_rs, None, &[], sources.is_empty());
            return;
        }
    };
    let version = match nvcc_version(&nvcc) {
        Ok(v) => v,
        Err(why) => {
            let msg = format!(
                "CUDA kernels were not built: {} does not run ({why}). Fix: run \
                 scripts/install-cuda-toolchain.sh (or set FERROTRON_NVCC), then rebuild.",
                nvcc.display()
            );
            if require {
                panic!("FERROTRON_REQUIRE_KERNELS is set and {msg}");
            }
            println!("cargo:warning={msg}");
            write_images_rs(&images_rs, None, &[], sources.is_empty());
            return;
        }
    };

    // A source whose inputs (its text, every header, the flags, nvcc) hash to the stamp left by
    // its last successful compilation is not compiled again.
    let keys: Vec<String> = sources
        .iter()
        .map(|src| input_key(src, &headers, &generated_headers, &nvcc, &version))
        .collect();
    let cached: Vec<bool> = sources
        .iter()
        .zip(&keys)
        .map(|(src, key)| is_cached(&out_dir, src, key))
        .collect();

    // Two jobs per source to compile (fatbin, ptx), run by a pool of NUM_JOBS workers.
    let started = Instant::now();
    let jobs: Vec<(usize, bool)> = (0..sources.len())
        .filter(|&i| !cached[i])
        .flat_map(|i| [(i, true), (i, false)])
        .collect();
    let results = run_jobs(&nvcc, &[&include_dir, &gen_dir], &out_dir, &sources, jobs);
    let total = started.elapsed();

    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "nvcc {} ({version}), {} sources, {:.2} s wall",
        nvcc.display(),
        sources.len(),
        total.as_secs_f64()
    );
    let mut built = Vec::new();
    let mut failures = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let stamp = out_dir.join(format!("{}.stamp", src.stem));
        if cached[i] {
            let _ = writeln!(summary, "{}: cached (inputs unchanged)", src.name);
            built.push(src);
            continue;
        }
        let fat = &results[&(i, true)];
        let ptx = &results[&(i, false)];
        let mut log = String::new();
        for r in [fat, ptx] {
            let _ = writeln!(
                log,
                "$ {}\n# {} in {:.2} s\n{}",
                r.command,
                if r.ok { "ok" } else { "FAILED" },
                r.elapsed.as_secs_f64(),
                r.stderr
            );
        }
        let log_path = out_dir.join(format!("{}.log", src.stem));
        let _ = fs::write(&log_path, &log);
        let _ = writeln!(
            summary,
            "{}: fatbin {} {:.2} s, ptx {} {:.2} s",
            src.name,
            if fat.ok { "ok" } else { "FAILED" },
            fat.elapsed.as_secs_f64(),
            if ptx.ok { "ok" } else { "FAILED" },
            ptx.elapsed.as_secs_f64()
        );
        if fat.ok && ptx.ok {
            let _ = fs::write(&stamp, &keys[i]);
            built.push(src);
        } else {
            let _ = fs::remove_file(&stamp);
            failures.push((src, log_path, log));
        }
    }
    let _ = fs::write(out_dir.join("kernels_build.log"), &summary);

    if !failures.is_empty() {
        if require {
            let mut msg =
                String::from("FERROTRON_REQUIRE_KERNELS is set and kernels failed to compile:\n");
            for (src, _, log) in &failures {
                let _ = writeln!(msg, "=== {} ===\n{log}", src.name);
            }
            panic!("{msg}");
        }
        for (src, log_path, log) in &failures {
            let first_error = log
                .lines()
                .find(|l| l.contains("error"))
                .unwrap_or("(no error line; see the log)");
            println!(
                "cargo:warning=CUDA kernel {} failed to compile and is not embedded: {} \
                 (full log: {})",
                src.name,
                first_error.trim(),
                log_path.display()
            );
        }
    }
    write_images_rs(&images_rs, Some(&version), &built, failures.is_empty());
}

/// Emits `rerun-if-changed` for `dir`, every subdirectory (so new files are noticed) and every
/// `.cu` / `.cuh` / `.h` file under it, and collects the `.cu` files and the headers.
fn watch_and_collect(
    root: &Path,
    dir: &Path,
    sources: &mut Vec<Source>,
    headers: &mut Vec<PathBuf>,
) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            watch_and_collect(root, &path, sources, headers);
            continue;
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "cu" | "cuh" | "h") {
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        if ext == "cu" {
            let rel = path
                .strip_prefix(root)
                .expect("under kernels/")
                .with_extension("");
            let name = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let stem = name.replace('/', "_");
            sources.push(Source {
                name,
                stem,
                path,
                generated: false,
            });
        } else {
            headers.push(path);
        }
    }
}

/// Whether an environment variable is set to a true value (`1`, `true`, `yes`, `on`).
fn env_flag(var: &str) -> bool {
    env::var(var)
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// Finds nvcc, or says where it looked.
fn find_nvcc() -> Result<PathBuf, String> {
    if let Some(explicit) = env::var_os("FERROTRON_NVCC").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&explicit);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("FERROTRON_NVCC={} is not a file", p.display()))
        };
    }
    let cache = match env::var_os("FERROTRON_CUDA_CACHE").filter(|v| !v.is_empty()) {
        Some(c) => Some(PathBuf::from(c)),
        None => env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache"))
            })
            .map(|c| c.join("ferrotron").join("cuda-13.0")),
    };
    if let Some(cache) = &cache {
        if let Some(p) = nvcc_in_cache(cache) {
            return Ok(p);
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "no nvcc found (FERROTRON_NVCC unset, none in the cache {}, none on PATH)",
        cache
            .map(|c| c.display().to_string())
            .unwrap_or_else(|| "(no HOME)".into())
    ))
}

/// `<cache>/venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc`, if present.
fn nvcc_in_cache(cache: &Path) -> Option<PathBuf> {
    let lib = cache.join("venv").join("lib");
    let mut pythons: Vec<PathBuf> = fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    pythons.sort();
    pythons
        .into_iter()
        .map(|p| p.join("site-packages/nvidia/cu13/bin/nvcc"))
        .find(|p| p.is_file())
}

/// nvcc's release, e.g. `13.0.88` from "Cuda compilation tools, release 13.0, V13.0.88".
fn nvcc_version(nvcc: &Path) -> Result<String, String> {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "`nvcc --version` exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or_else(|| text.lines().last().unwrap_or("unknown"));
    Ok(line
        .rsplit(", V")
        .next()
        .filter(|v| !v.contains(' '))
        .unwrap_or(line.trim())
        .to_string())
}

/// Runs the (source, is_fatbin) jobs on a small pool of threads, each driving one nvcc.
fn run_jobs(
    nvcc: &Path,
    include_dirs: &[&Path],
    out_dir: &Path,
    sources: &[Source],
    jobs: Vec<(usize, bool)>,
) -> std::collections::HashMap<(usize, bool), JobResult> {
    let workers = env::var("NUM_JOBS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .or_else(|| thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(2)
        .clamp(1, jobs.len().max(1));
    let queue = Arc::new(Mutex::new(jobs.into_iter().rev().collect::<Vec<_>>()));
    let results = Arc::new(Mutex::new(std::collections::HashMap::new()));
    thread::scope(|s| {
        for _ in 0..workers {
            let queue = Arc::clone(&queue);
            let results = Arc::clone(&results);
            s.spawn(move || loop {
                let Some((i, fatbin)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let r = run_nvcc(nvcc, include_dirs, out_dir, &sources[i], fatbin);
                results.lock().unwrap().insert((i, fatbin), r);
            });
        }
    });
    Arc::try_unwrap(results)
        .ok()
        .expect("workers joined")
        .into_inner()
        .unwrap()
}

/// One nvcc invocation: the fatbin or the PTX of one source.
fn run_nvcc(
    nvcc: &Path,
    include_dirs: &[&Path],
    out_dir: &Path,
    src: &Source,
    fatbin: bool,
) -> JobResult {
    let output = out_dir.join(format!(
        "{}.{}",
        src.stem,
        if fatbin { "fatbin" } else { "ptx" }
    ));
    let _ = fs::remove_file(&output);
    let mut cmd = Command::new(nvcc);
    cmd.args(if fatbin { FATBIN_FLAGS } else { PTX_FLAGS })
        .args(COMMON_FLAGS);
    for dir in include_dirs {
        cmd.arg("-I").arg(dir);
    }
    cmd.arg(&src.path).arg("-o").arg(&output);
    let command = format!("{cmd:?}").replace('"', "");
    let started = Instant::now();
    let (ok, stderr) = match cmd.output() {
        Ok(out) => {
            let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            stderr.push_str(&String::from_utf8_lossy(&out.stdout));
            let produced = fs::metadata(&output).map(|m| m.len() > 0).unwrap_or(false);
            if out.status.success() && !produced {
                stderr.push_str("nvcc succeeded but wrote no output\n");
            }
            (out.status.success() && produced, stderr)
        }
        Err(e) => (false, format!("could not run {}: {e}\n", nvcc.display())),
    };
    JobResult {
        ok,
        command,
        stderr,
        elapsed: started.elapsed(),
    }
}

/// Writes `kernel_images.rs`: the embedded images, nvcc's version and whether every source built.
fn write_images_rs(path: &Path, version: Option<&str>, built: &[&Source], complete: bool) {
    let mut s = String::from(
        "// Generated by build.rs: the CUDA kernel images embedded in this build.\n\n",
    );
    let _ = writeln!(
        s,
        "/// nvcc's release (e.g. `13.0.88`) when build.rs found nvcc, `None` when it did not.\n\
         pub const NVCC_VERSION: Option<&str> = {};\n",
        match version {
            Some(v) => format!("Some({v:?})"),
            None => "None".into(),
        }
    );
    let _ = writeln!(
        s,
        "/// Whether nvcc was found and every `.cu` under `kernels/` and every generated source\n\
         /// compiled.\n\
         const ALL_KERNELS_BUILT: bool = {};\n",
        version.is_some() && complete
    );
    for src in built {
        let _ = writeln!(
            s,
            "static {ident}: &AlignedBytes<[u8]> = &AlignedBytes {{\n    _align: [],\n    \
             bytes: *include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{stem}.fatbin\")),\n}};\n",
            ident = fatbin_ident(&src.stem),
            stem = src.stem
        );
    }
    let lists = [
        (
            "/// Every kernel image of a `kernels/**/*.cu` source in this build, sorted by name.\n\
             pub static KERNEL_IMAGES: &[KernelImage] = &[\n",
            false,
        ),
        (
            "/// Every image of a generated source (`OUT_DIR/generated/*.cu`) in this build.\n\
             pub static GENERATED_IMAGES: &[KernelImage] = &[\n",
            true,
        ),
    ];
    for (head, generated) in lists {
        s.push_str(head);
        for src in built.iter().filter(|s| s.generated == generated) {
            let _ = writeln!(
                s,
                "    KernelImage {{\n        name: {name:?},\n        fatbin: &{ident}.bytes,\n        \
                 ptx: include_str!(concat!(env!(\"OUT_DIR\"), \"/{stem}.ptx\")),\n    }},",
                name = src.name,
                ident = fatbin_ident(&src.stem),
                stem = src.stem
            );
        }
        s.push_str("];\n");
    }
    fs::write(path, s).expect("write kernel_images.rs");
}

/// Writes the generated sources into `gen_dir` (a file only when its content changed), adds the
/// generated kernel sources to `sources` and returns the generated headers.
fn generate(gen_dir: &Path, sources: &mut Vec<Source>) -> Result<Vec<PathBuf>, String> {
    use codegen::variants;
    fs::create_dir_all(gen_dir).map_err(|e| format!("{}: {e}", gen_dir.display()))?;
    let write = |name: &str, text: &str| -> Result<PathBuf, String> {
        let path = gen_dir.join(name);
        if fs::read_to_string(&path).ok().as_deref() != Some(text) {
            fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(path)
    };
    let epilogues = variants::epilogues_header().map_err(|e| e.to_string())?;
    let headers = vec![
        write("ft_epilogues.cuh", &epilogues)?,
        write("ft_gemm_entries.cuh", &variants::gemm_entries())?,
    ];
    let fused = write("fused.cu", &variants::fused_source())?;
    sources.push(Source {
        name: "generated/fused".into(),
        stem: "generated_fused".into(),
        path: fused,
        generated: true,
    });
    Ok(headers)
}

/// `elementwise_bias_gelu` -> `ELEMENTWISE_BIAS_GELU_FATBIN`.
fn fatbin_ident(stem: &str) -> String {
    let mut id: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    id.push_str("_FATBIN");
    if id.starts_with(|c: char| c.is_ascii_digit()) {
        id.insert(0, '_');
    }
    id
}

/// A hash of everything a compilation depends on: the source, every header under `kernels/` (any
/// source may include any of them), the generated headers the source names, the flags and the
/// compiler.
fn input_key(
    src: &Source,
    headers: &[PathBuf],
    generated_headers: &[PathBuf],
    nvcc: &Path,
    version: &str,
) -> String {
    let mut h = Fnv1a::default();
    for flag in FATBIN_FLAGS.iter().chain(PTX_FLAGS).chain(COMMON_FLAGS) {
        h.write(flag.as_bytes());
    }
    h.write(nvcc.as_os_str().as_encoded_bytes());
    h.write(version.as_bytes());
    let text = fs::read(&src.path).unwrap_or_default();
    let names = |p: &PathBuf| {
        p.file_name().is_some_and(|f| {
            let f = f.as_encoded_bytes();
            text.windows(f.len()).any(|w| w == f)
        })
    };
    let used_generated = generated_headers.iter().filter(|p| names(p));
    for path in std::iter::once(&src.path)
        .chain(headers)
        .chain(used_generated)
    {
        h.write(path.as_os_str().as_encoded_bytes());
        h.write(&fs::read(path).unwrap_or_default());
    }
    format!("{:016x}\n", h.0)
}

/// Whether `src`'s outputs exist and its stamp matches `key`.
fn is_cached(out_dir: &Path, src: &Source, key: &str) -> bool {
    let nonempty = |ext: &str| {
        fs::metadata(out_dir.join(format!("{}.{ext}", src.stem)))
            .map(|m| m.len() > 0)
            .unwrap_or(false)
    };
    fs::read_to_string(out_dir.join(format!("{}.stamp", src.stem))).is_ok_and(|s| s == key)
        && nonempty("fatbin")
        && nonempty("ptx")
}

/// 64-bit FNV-1a: small, deterministic across toolchains, good enough to detect changed inputs.
/// Each write is length-prefixed so that field boundaries count.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
