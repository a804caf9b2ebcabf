//! ptx-emu: a PTX interpreter that runs the PTX nvcc emits for sm_80 on the CPU.
//!
//! - [`parse`] reads PTX text into an [`ast::Module`]; [`Module::parse`] also decodes every
//!   kernel into the compact form of [`program`] (an opcode form the emulator does not implement
//!   is an error there, naming the line).
//! - [`Memory`] is the global memory of any number of emulated devices in one address space,
//!   with shadow state for the sanitizer checks and peer access between devices.
//! - [`LoadedModule::launch`] runs a kernel: a grid of CTAs, warps of 32 threads, each thread
//!   with its own program counter, a seeded interleaving, barriers and warp collectives, the
//!   checks of [`exec::Checks`], and returns exact [`Metrics`].
//!
//! ```
//! use ptx_emu::{LaunchConfig, Memory, Module};
//! let ptx = r#"
//! .version 9.0
//! .target sm_80
//! .address_size 64
//! .visible .entry add_one(.param .u64 p, .param .u32 n)
//! {
//!     .reg .pred %p<2>; .reg .b32 %r<4>; .reg .f32 %f<3>; .reg .b64 %rd<5>;
//!     ld.param.u64 %rd1, [p];
//!     ld.param.u32 %r1, [n];
//!     mov.u32 %r2, %tid.x;
//!     setp.ge.u32 %p1, %r2, %r1;
//!     @%p1 bra DONE;
//!     cvta.to.global.u64 %rd2, %rd1;
//!     mul.wide.u32 %rd3, %r2, 4;
//!     add.s64 %rd4, %rd2, %rd3;
//!     ld.global.f32 %f1, [%rd4];
//!     add.f32 %f2, %f1, 0f3F800000;
//!     st.global.f32 [%rd4], %f2;
//! DONE:
//!     ret;
//! }"#;
//! let module = Module::parse(ptx).unwrap();
//! let mem = Memory::new();
//! let loaded = module.load(&mem, 0).unwrap();
//! let buf = mem.alloc(0, 4 * 5).unwrap();
//! let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0].iter().flat_map(|x| x.to_le_bytes()).collect();
//! mem.write(buf, &data).unwrap();
//! let mut params = buf.to_le_bytes().to_vec();
//! params.extend_from_slice(&5u32.to_le_bytes());
//! let metrics = loaded.launch("add_one", &params, &LaunchConfig::linear(1, 32)).unwrap();
//! let mut out = vec![0u8; 20];
//! mem.read_bytes(buf, &mut out).unwrap();
//! assert_eq!(f32::from_le_bytes(out[16..20].try_into().unwrap()), 6.0);
//! assert_eq!(metrics.global_load_requests, 1);
//! ```

pub mod ast;
pub mod error;
pub mod exec;
pub mod fragments;
pub mod memory;
pub mod metrics;
pub mod numerics;
pub mod parse;
pub mod program;

pub use error::{EmuError, Result, Site};
pub use exec::{Checks, LaunchConfig};
pub use memory::Memory;
pub use metrics::{GpuSpec, Metrics, Roofline};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A parsed and decoded PTX module. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Module {
    program: Arc<program::Program>,
    forms: BTreeMap<String, usize>,
}

impl Module {
    /// Parses `src` and decodes every `.entry`.
    ///
    /// # Errors
    /// [`EmuError::Parse`] for malformed text, [`EmuError::Unsupported`] for an opcode form or
    /// construct the emulator does not implement (naming the line).
    pub fn parse(src: &str) -> Result<Module> {
        let ast = parse::parse(src)?;
        let globals = program::module_globals(&ast);
        let mut kernels = std::collections::HashMap::new();
        let mut forms = BTreeMap::new();
        for f in ast.functions.iter().filter(|f| f.is_entry) {
            let k = program::decode_kernel(&ast, &globals, f)?;
            for inst in &k.insts[..k.insts.len() - 1] {
                *forms
                    .entry(k.forms[inst.form as usize].clone())
                    .or_insert(0) += 1;
            }
            kernels.insert(k.name.clone(), k);
        }
        if let Some(f) = ast
            .functions
            .iter()
            .find(|f| !f.is_entry && f.body.is_some())
        {
            return Err(EmuError::unsupported(
                f.line,
                format!(
                    ".func {} (device function calls are not implemented)",
                    f.name
                ),
            ));
        }
        Ok(Module {
            program: Arc::new(program::Program { kernels, globals }),
            forms,
        })
    }

    /// The kernel names, sorted.
    pub fn kernel_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.program.kernels.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// A decoded kernel.
    pub fn kernel(&self, name: &str) -> Result<&program::Kernel> {
        self.program
            .kernels
            .get(name)
            .ok_or_else(|| EmuError::UnknownName {
                kind: "kernel",
                name: name.to_string(),
            })
    }

    /// Every opcode form (`ld.global.nc.v2.u16`) in the module's kernels with its static count.
    pub fn opcode_forms(&self) -> &BTreeMap<String, usize> {
        &self.forms
    }

    /// The distinct opcode forms.
    pub fn opcode_form_set(&self) -> BTreeSet<&str> {
        self.forms.keys().map(String::as_str).collect()
    }

    /// Loads the module onto `device` of `memory`: allocates and initialises its module-scope
    /// `.global` / `.const` variables.
    pub fn load(&self, memory: &Memory, device: u32) -> Result<LoadedModule> {
        let mut addrs = Vec::new();
        for g in &self.program.globals {
            let a = memory.alloc(device, g.size)?;
            memory.write(a, &g.init)?;
            addrs.push(a);
        }
        Ok(LoadedModule {
            module: self.clone(),
            memory: memory.clone(),
            device,
            globals: addrs,
        })
    }
}

/// A module loaded on one device: kernels can be launched.
#[derive(Clone, Debug)]
pub struct LoadedModule {
    module: Module,
    memory: Memory,
    device: u32,
    globals: Vec<u64>,
}

impl LoadedModule {
    /// The module.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// The device it is loaded on.
    pub fn device(&self) -> u32 {
        self.device
    }

    /// Runs kernel `name` to completion with the parameter buffer `params` (the bytes of the
    /// kernel's `.param` space, laid out as the C ABI lays out the arguments) and returns its
    /// counters.
    ///
    /// # Errors
    /// Bad configuration ([`EmuError::BadLaunch`]), and whatever the run finds: out-of-bounds,
    /// misaligned or uninitialised accesses, shared-memory races, deadlocks, divergent warp
    /// collectives, the instruction limit.
    pub fn launch(&self, name: &str, params: &[u8], cfg: &LaunchConfig) -> Result<Metrics> {
        let kernel = self.module.kernel(name)?;
        let view = self.memory.view(self.device);
        exec::Launch::new(kernel, view, params, &self.globals, cfg)?.run()
    }
}
