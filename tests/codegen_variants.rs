//! The code generator's shipped variants (`codegen::variants`, issue #10) in this build: the
//! GEMM entry points build.rs generated from `GEMM_INSTANCES` are exactly the `gemm/gemm`
//! image's entries, and every shipped fused elementwise kernel of the `generated/fused` image
//! passes `ferrotron check`'s emulator comparison with the f64 evaluator (odd and aligned shapes,
//! poisoned outputs, NaN failing) on several seeds.
//!
//! Without kernels (built without nvcc) the tests print why they skipped; with
//! `FERROTRON_REQUIRE_KERNELS=1` that is a failure.

mod common;

use codegen::variants::{fused, GEMM_INSTANCES};
use common::kernels_or_skip;
use ferrotron::{check, kernels};

#[test]
fn gemm_entries_are_the_generated_instances() {
    if !kernels_or_skip("gemm_entries") {
        return;
    }
    let img = kernels::image("gemm/gemm").expect("gemm image");
    let mut entries = img.entries();
    entries.sort_unstable();
    let mut want: Vec<String> = GEMM_INSTANCES
        .iter()
        .flat_map(|i| {
            ["", "_small", "_unaligned"]
                .into_iter()
                .map(move |sfx| format!("{}{sfx}", i.entry()))
        })
        .collect();
    want.sort_unstable();
    assert_eq!(entries, want);
    for name in [
        "ft_gemm_nt_bias_gelu_bf16",
        "ft_gemm_nn_dgelu_f32",
        "ft_gemm_tn_accum_f32",
    ] {
        assert!(entries.contains(&name), "{name}");
    }
}

#[test]
fn every_shipped_fused_variant_matches_the_evaluator_on_the_emulator() {
    if !kernels_or_skip("fused_variants") {
        return;
    }
    let img = kernels::image("generated/fused").expect("generated image");
    assert!(kernels::generated_images()
        .iter()
        .any(|i| i.name == img.name));
    assert!(
        !kernels::images().iter().any(|i| i.name == img.name),
        "generated images are listed apart from kernels/"
    );
    let variants = fused();
    assert_eq!(img.entries().len(), variants.len());
    for seed in [1u64, 0xfeed] {
        let rows = check::fused_rows("emu", seed);
        assert_eq!(rows.len(), variants.len() * check::FUSED_SHAPES.len());
        for v in &variants {
            let op = format!("fused {}", v.name);
            assert_eq!(
                rows.iter().filter(|r| r.op == op).count(),
                check::FUSED_SHAPES.len(),
                "{op}"
            );
        }
        let failed: Vec<_> = rows.iter().filter(|r| !r.passed()).collect();
        assert!(failed.is_empty(), "seed {seed}: {failed:#?}");
    }
}
