//! The CUDA kernels build.rs compiled from `kernels/`, embedded in the binary, and their ABI.
//!
//! Every `kernels/<family>/<name>.cu` becomes one [`KernelImage`] named `"<family>/<name>"`
//! (e.g. `"elementwise/bias_gelu"`) holding two compilations of the same source:
//! - [`KernelImage::fatbin`]: sm_80 and sm_90a SASS plus compute_80 PTX, for real GPUs
//!   (`cuModuleLoadData`, in cudarc `Ptx::from_binary`);
//! - [`KernelImage::ptx`]: sm_80 PTX text, for the PTX emulator (and `Ptx::from_src`), so the
//!   code the tests interpret is the code that ships.
//!
//! The code generator's shipped fused elementwise kernels (`codegen::variants::fused`), which
//! build.rs writes to `OUT_DIR/generated/fused.cu`, become the image `"generated/fused"`, listed
//! by [`generated_images`] (not [`images`], which mirrors `kernels/`); [`image`] finds both.
//!
//! Kernels take one parameter struct by value; those structs are defined once, in
//! `kernels/include/ferrotron_params.h`, and reach Rust through bindgen as [`abi`].
//!
//! When the crate was built without nvcc, [`images`] is empty, [`NVCC_VERSION`] is `None`,
//! [`kernels_built`] is `false` and [`image`] returns [`Error::KernelImageMissing`]: the CPU
//! backend works regardless. Run `scripts/install-cuda-toolchain.sh` and rebuild to get them;
//! `FERROTRON_REQUIRE_KERNELS=1` makes a build without them fail instead.

use crate::error::{Error, Result};
use std::fmt;

/// The kernel parameter structs: bindgen's output for `kernels/include/ferrotron_params.h`,
/// committed and kept fresh by `tests/kernel_abi.rs` (`FERROTRON_BLESS=1 cargo test --test
/// kernel_abi` regenerates it). Formatted by bindgen, not rustfmt, hence `rustfmt::skip`.
#[rustfmt::skip]
pub mod abi;

/// One compiled kernel source file, embedded at build time.
#[derive(Clone, Copy)]
pub struct KernelImage {
    /// The source's path under `kernels/` without `.cu`, e.g. `"elementwise/bias_gelu"`.
    pub name: &'static str,
    /// The fatbin (sm_80 + sm_90a SASS, compute_80 PTX); its start is 16-byte aligned, so it can
    /// be handed to the driver in place.
    pub fatbin: &'static [u8],
    /// The sm_80 PTX text of the same source (what the emulator runs).
    pub ptx: &'static str,
}

impl KernelImage {
    /// The kernel entry points (`.entry` names) in this image's PTX, in file order.
    pub fn entries(&self) -> Vec<&'static str> {
        ptx_entries(self.ptx)
    }
}

impl fmt::Debug for KernelImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelImage")
            .field("name", &self.name)
            .field("fatbin_bytes", &self.fatbin.len())
            .field("ptx_bytes", &self.ptx.len())
            .finish()
    }
}

/// Forces the alignment of an embedded byte string (`include_bytes!` alone gives 1).
#[allow(dead_code)] // unused when built without nvcc
#[repr(C)]
struct AlignedBytes<B: ?Sized> {
    _align: [Align16; 0],
    bytes: B,
}

#[allow(dead_code)] // unused when built without nvcc
#[repr(align(16))]
struct Align16;

// build.rs writes `NVCC_VERSION`, `ALL_KERNELS_BUILT`, `KERNEL_IMAGES` and `GENERATED_IMAGES`
// (and one aligned static per fatbin).
include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));

/// Every kernel image embedded in this build, sorted by name (empty when built without nvcc).
pub fn images() -> &'static [KernelImage] {
    KERNEL_IMAGES
}

/// Every image of a generated source embedded in this build (`"generated/fused"`; empty when
/// built without nvcc).
pub fn generated_images() -> &'static [KernelImage] {
    GENERATED_IMAGES
}

/// The image compiled from `kernels/<name>.cu`, e.g. `image("elementwise/bias_gelu")`, or from
/// a generated source (`image("generated/fused")`).
///
/// # Errors
/// [`Error::KernelImageMissing`] when no image has that name: the crate was built without nvcc,
/// that source failed to compile (build.rs warned), or there is no such source.
pub fn image(name: &str) -> Result<&'static KernelImage> {
    images()
        .iter()
        .chain(generated_images())
        .find(|img| img.name == name)
        .ok_or_else(|| Error::KernelImageMissing {
            name: name.to_string(),
        })
}

/// Whether build.rs found nvcc and every `.cu` file under `kernels/` (and every generated source)
/// compiled into an image.
pub fn kernels_built() -> bool {
    ALL_KERNELS_BUILT
}

/// The names of the kernel entry points (`.entry` directives) in a PTX text, in order.
///
/// Comments (`// ...`) are ignored; a name ends at `(`, whitespace or the end of the line.
pub fn ptx_entries(ptx: &str) -> Vec<&str> {
    let mut entries = Vec::new();
    for line in ptx.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut tokens = code.split_whitespace();
        while let Some(tok) = tokens.next() {
            if tok != ".entry" {
                continue;
            }
            let Some(next) = tokens.next() else { break };
            let name = next.split('(').next().unwrap_or("");
            if !name.is_empty() {
                entries.push(name);
            }
        }
    }
    entries
}

// SAFETY: each parameter struct is `#[repr(C)]` plain old data generated by bindgen from
// `kernels/include/ferrotron_params.h`: device pointers and `u64`s with the C layout nvcc uses for
// the kernel's by-value parameter (the `kernel_abi` test keeps the two in sync). cudarc copies the
// bytes into the launch's parameter buffer; no Rust invariant lives in them.
unsafe impl cudarc::driver::DeviceRepr for abi::FtBiasGeluFwdParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for abi::FtBiasGeluBwdDbiasParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for abi::FtGemmParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for abi::FtPeerCollParams {}
// SAFETY: as above (an `FtGemmParams` then pointers and `u64`s).
unsafe impl cudarc::driver::DeviceRepr for abi::FtAgGemmParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for abi::FtAddParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for abi::FtBiasAddParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for abi::FtColumnSumParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for abi::FtLayerNormFwdParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for abi::FtLayerNormBwdParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for abi::FtSoftmaxFwdParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for abi::FtSoftmaxBwdParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for abi::FtCrossEntropyParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for abi::FtAdamWParams {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_parsed_from_ptx() {
        let ptx = "\
.version 9.0
.target sm_80
\t// .globl\tft_a
.visible .entry ft_a(
\t.param .align 8 .b8 ft_a_param_0[40]
)
{ ret; }
// .entry not_me(
.entry ft_b (
)
{ ret; }
.func helper()
";
        assert_eq!(ptx_entries(ptx), vec!["ft_a", "ft_b"]);
        assert!(ptx_entries("").is_empty());
    }

    #[test]
    fn missing_image_is_a_typed_error() {
        assert_eq!(
            image("no/such_kernel").unwrap_err(),
            Error::KernelImageMissing {
                name: "no/such_kernel".into()
            }
        );
    }

    #[test]
    fn images_are_consistent() {
        for img in images().iter().chain(generated_images()) {
            assert!(!img.fatbin.is_empty(), "{}", img.name);
            assert_eq!(img.fatbin.as_ptr() as usize % 16, 0, "{}", img.name);
            assert!(!img.entries().is_empty(), "{}", img.name);
            assert!(std::ptr::eq(image(img.name).unwrap(), img));
        }
        if kernels_built() {
            assert!(NVCC_VERSION.is_some());
            // Every shipped fused variant is an entry of the generated image.
            let fused = image("generated/fused").expect("generated image");
            for v in codegen::variants::fused() {
                let k = v.kernel();
                assert!(fused.entries().contains(&k.name.as_str()), "{}", v.name);
            }
        }
    }
}
