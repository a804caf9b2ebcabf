//! Freshness of the kernel ABI: `src/kernels/abi.rs` must be exactly what bindgen makes of
//! `kernels/include/ferrotron_params.h` today.
//!
//! Regenerate (after changing the header) with
//!
//! ```text
//! FERROTRON_BLESS=1 cargo test --test kernel_abi
//! ```
//!
//! bindgen needs libclang (`apt-get install libclang-dev` on Debian/Ubuntu).

use std::path::{Path, PathBuf};

/// The header, relative to the package root.
const HEADER: &str = "kernels/include/ferrotron_params.h";
/// The committed bindgen output, relative to the package root.
const ABI_RS: &str = "src/kernels/abi.rs";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// THE bindgen configuration for the kernel ABI: the freshness check and the regeneration both
/// call this, so they cannot disagree.
///
/// - Only the `Ft*` types (and what they use) are emitted.
/// - `Debug`, `Copy`, `Clone` and `Default` are derived (bindgen implements `Default` by zeroing
///   when raw pointers rule out `#[derive(Default)]`).
/// - Layout checks are kept: they are compile-time `const` assertions (no `#[test]` clutter) that
///   the Rust layout equals the C layout clang computed.
/// - Formatting is bindgen's built-in prettyplease, not the `rustfmt` binary, so the output does
///   not depend on which rustfmt happens to be installed (`pub mod abi` is `#[rustfmt::skip]`).
fn abi_bindings(header: &Path) -> String {
    let bindings = bindgen::Builder::default()
        .header(header.to_str().expect("UTF-8 path"))
        .clang_arg("-std=c11")
        .allowlist_type("Ft.*")
        .derive_debug(true)
        .derive_copy(true)
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(true)
        .formatter(bindgen::Formatter::Prettyplease)
        .raw_line(
            "// GENERATED FILE, DO NOT EDIT: bindgen output for kernels/include/ferrotron_params.h,",
        )
        .raw_line("// the single source of the kernel parameter ABI. Regenerate with")
        .raw_line("//     FERROTRON_BLESS=1 cargo test --test kernel_abi")
        .raw_line("// (options in tests/kernel_abi.rs). The `DeviceRepr` impls live in")
        .raw_line("// src/kernels/mod.rs, by hand.")
        .raw_line("#![allow(non_camel_case_types, clippy::all)]")
        .generate()
        .unwrap_or_else(|e| {
            panic!(
                "bindgen failed on {} ({e}); it needs libclang: apt-get install libclang-dev",
                header.display()
            )
        });
    bindings.to_string()
}

#[test]
fn committed_abi_matches_header() {
    let root = root();
    let fresh = abi_bindings(&root.join(HEADER));
    let path = root.join(ABI_RS);
    let bless = std::env::var("FERROTRON_BLESS").is_ok_and(|v| v == "1");
    if bless {
        std::fs::write(&path, &fresh).expect("write abi.rs");
        eprintln!("regenerated {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed.replace("\r\n", "\n") != fresh {
        let first_diff = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .map(|i| i + 1)
            .unwrap_or(committed.lines().count().min(fresh.lines().count()) + 1);
        panic!(
            "{ABI_RS} is stale: it differs from bindgen's output for {HEADER} (first at line \
             {first_diff}). Regenerate it with\n    FERROTRON_BLESS=1 cargo test --test kernel_abi\n\
             and commit the result (never edit {ABI_RS} by hand)."
        );
    }
}

#[test]
fn abi_has_every_kernel_struct() {
    let fresh = abi_bindings(&root().join(HEADER));
    for name in [
        "FtBiasGeluFwdParams",
        "FtBiasGeluBwdDbiasParams",
        "FtGemmParams",
    ] {
        assert!(
            fresh.contains(&format!("pub struct {name}")),
            "bindgen output lacks {name}"
        );
    }
}
