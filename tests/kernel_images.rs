//! The embedded kernel images: one per `kernels/**/*.cu`, each with a fatbin and PTX.
//!
//! With `FERROTRON_REQUIRE_KERNELS=1` (CI, or any machine with nvcc) every check must pass; the
//! build itself already fails without nvcc then. Without it, a build that had no nvcc skips the
//! checks and says why.

use ferrotron::kernels;
use std::path::{Path, PathBuf};

/// The fatbin container's magic number (little-endian `0xBA55ED50`).
const FATBIN_MAGIC: [u8; 4] = [0x50, 0xed, 0x55, 0xba];

/// The entry points `kernels/elementwise/bias_gelu.cu` must export.
const BIAS_GELU_ENTRIES: [&str; 6] = [
    "ft_bias_gelu_fwd_f32",
    "ft_bias_gelu_fwd_bf16",
    "ft_bias_gelu_bwd_dbias_f32",
    "ft_bias_gelu_bwd_dbias_bf16",
    "ft_bias_gelu_dbias_reduce_f32",
    "ft_bias_gelu_dbias_reduce_bf16",
];

/// The entry points `kernels/overlap/ag_gemm.cu` must export (and nothing else).
const AG_GEMM_ENTRIES: [&str; 5] = [
    "ft_ag_gemm_stage_bf16",
    "ft_ag_gemm_nt_none_bf16",
    "ft_ag_gemm_nt_none_bf16_small",
    "ft_ag_gemm_nt_bias_bf16",
    "ft_ag_gemm_nt_bias_bf16_small",
];

/// The entry points `kernels/overlap/gemm_rs.cu` must export (and nothing else).
const GEMM_RS_ENTRIES: [&str; 3] = [
    "ft_gemm_rs_nt_bf16",
    "ft_gemm_rs_nt_bf16_small",
    "ft_gemm_rs_reduce_bf16",
];

fn require_kernels() -> bool {
    std::env::var("FERROTRON_REQUIRE_KERNELS").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// `kernels/<family>/<name>.cu` -> `"<family>/<name>"`, sorted.
fn kernel_sources() -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read kernels/").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "cu") {
                let rel = path.strip_prefix(root).unwrap().with_extension("");
                let name: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(name.join("/"));
            }
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    out
}

/// Whether to check, or why not.
fn should_check() -> bool {
    if require_kernels() || kernels::kernels_built() {
        return true;
    }
    eprintln!(
        "skipping kernel image checks: this build has {} images and nvcc {:?} (build.rs found no \
         nvcc or a kernel failed; run scripts/install-cuda-toolchain.sh and rebuild, or set \
         FERROTRON_REQUIRE_KERNELS=1 to make this a failure)",
        kernels::images().len(),
        kernels::NVCC_VERSION
    );
    false
}

#[test]
fn every_source_has_an_image() {
    if !should_check() {
        return;
    }
    assert!(
        kernels::kernels_built(),
        "build.rs did not build every kernel"
    );
    assert!(kernels::NVCC_VERSION.is_some());
    let sources = kernel_sources();
    assert!(!sources.is_empty(), "no .cu files under kernels/");
    let names: Vec<&str> = kernels::images().iter().map(|i| i.name).collect();
    assert_eq!(
        names, sources,
        "embedded images do not match kernels/**/*.cu (rebuild?)"
    );
    for name in &sources {
        let img = kernels::image(name).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            img.fatbin.len() > 16,
            "{name}: empty fatbin ({} bytes)",
            img.fatbin.len()
        );
        assert_eq!(
            img.fatbin[..4],
            FATBIN_MAGIC,
            "{name}: fatbin lacks the fatbin magic"
        );
        assert_eq!(
            img.fatbin.as_ptr() as usize % 16,
            0,
            "{name}: fatbin not 16-byte aligned"
        );
        assert!(
            img.ptx.contains(".target sm_80"),
            "{name}: PTX is not for sm_80"
        );
        assert!(!img.entries().is_empty(), "{name}: PTX has no .entry");
    }
}

#[test]
fn bias_gelu_exports_its_entries() {
    if !should_check() {
        return;
    }
    let img = kernels::image("elementwise/bias_gelu").unwrap_or_else(|e| panic!("{e}"));
    let entries = img.entries();
    for want in BIAS_GELU_ENTRIES {
        assert!(
            entries.contains(&want),
            "bias_gelu PTX lacks entry {want}; it has {entries:?}"
        );
    }
    assert_eq!(entries.len(), BIAS_GELU_ENTRIES.len(), "{entries:?}");
    // The kernels promise the accurate tanhf, so the CPU reference and the emulator agree.
    assert!(
        !img.ptx.contains("tanh.approx"),
        "bias_gelu uses the approximate tanh instruction"
    );
}

/// Image `name` exports exactly `want`.
fn exports_exactly(name: &str, want: &[&str]) {
    let img = kernels::image(name).unwrap_or_else(|e| panic!("{e}"));
    let mut entries = img.entries();
    entries.sort();
    let mut want = want.to_vec();
    want.sort();
    assert_eq!(entries, want, "{name} entry points");
}

#[test]
fn overlap_kernels_export_their_entries() {
    if !should_check() {
        return;
    }
    exports_exactly("overlap/ag_gemm", &AG_GEMM_ENTRIES);
    exports_exactly("overlap/gemm_rs", &GEMM_RS_ENTRIES);
}
