//! Fused elementwise kernels generated and compiled at run time.
//!
//! An expression built with [`codegen::expr`] becomes one CUDA C kernel
//! ([`codegen::emit::elementwise`]), compiled to PTX by NVRTC ([`nvrtc`]; no GPU needed) and
//! cached on disk, keyed by the kernel source (which names the expression), NVRTC's version and
//! the target `compute_80`. The same [`Fused`] then runs on every backend:
//! - **emu**: its PTX on ptx-emu (loaded once per device);
//! - **cuda**: its PTX loaded into the context (the driver JIT-compiles it once);
//! - **cpu**: the f64 evaluator ([`codegen::eval`]) rounded to the output type.
//!
//! ```no_run
//! use codegen::expr::{gelu, Bcast, Dtype, Graph};
//! use ferrotron::fused::Fused;
//! use ferrotron::{DType, Device, Tensor};
//! # fn main() -> ferrotron::Result<()> {
//! let g = Graph::new();
//! let x = g.input("x", Dtype::Bf16, Bcast::Full);
//! let b = g.input("b", Dtype::Bf16, Bcast::Row);
//! let s = g.input("s", Dtype::F32, Bcast::Scalar);
//! let f = Fused::compile(&(gelu(&x + &b) * &s), Dtype::Bf16)?;
//! let dev = Device::emu(0)?;
//! let stream = dev.new_stream()?;
//! let xt = Tensor::zeros(&dev, [4, 8], DType::BF16)?;
//! let bt = Tensor::zeros(&dev, [8], DType::BF16)?;
//! let mut y = Tensor::zeros(&dev, [4, 8], DType::BF16)?;
//! f.bind()
//!     .tensor("x", &xt)
//!     .tensor("b", &bt)
//!     .scalar("s", 0.5)
//!     .run(&stream, &mut y)?;
//! # Ok(())
//! # }
//! ```
//!
//! Arguments are bound by name ([`Fused::bind`]), so they cannot be passed in the wrong order;
//! a missing, unknown, doubly bound or mistyped argument, a wrong shape, dtype or device is a
//! typed [`Error`] before anything runs. The iteration space is `[rows, cols]` (`rows` the
//! product of all but the last dimension): the output's shape, or, for a per-row kernel (one
//! with a reduction whose result is one value per row, [`Fused::per_row`]), the shape of its
//! full inputs, the output being their leading dimensions. A [`Bcast::Full`] input has the
//! iteration space's shape, [`Bcast::Row`] is `[cols]`, [`Bcast::Col`] is `[rows]` (or the
//! leading dimensions), and a [`Bcast::Scalar`] is an `f32` value (rounded to its declared
//! type). The launch shape is the generated kernel's ([`Kernel::launch`]).

pub(crate) mod launch;
pub mod nvrtc;

pub use nvrtc::Nvrtc;

use crate::backend::cpu::Locked;
use crate::device::BackendKind;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::launch::{enqueue_host, prepare_kernel};
use crate::stream::Stream;
use crate::tensor::{HostData, Tensor};
use codegen::cache::{PtxCache, RunError};
use codegen::emit::Kernel;
use codegen::expr::{gelu, gelu_grad, Bcast, BinOp, Dtype, Expr, Graph, Node, NodeId, UnOp};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The op name in errors.
const OP: &str = "Fused::run";

/// The tensor dtype of a generated kernel's element type.
pub fn dtype_of(d: Dtype) -> DType {
    match d {
        Dtype::F32 => DType::F32,
        Dtype::Bf16 => DType::BF16,
    }
}

/// A disk cache of NVRTC-compiled PTX: a [`PtxCache`] over [`Nvrtc`].
#[derive(Debug)]
pub struct FusedCache {
    ptx: PtxCache,
}

impl FusedCache {
    /// A cache in `dir` (created if missing) compiling with `nvrtc`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the directory cannot be created.
    pub fn new(dir: &Path, nvrtc: Nvrtc) -> Result<FusedCache> {
        let ptx = PtxCache::with_compiler(dir, Box::new(nvrtc)).map_err(|e| {
            Error::invalid("FusedCache::new", "dir", format!("{}: {e}", dir.display()))
        })?;
        Ok(FusedCache { ptx })
    }

    /// The directory of the process-wide cache: `FERROTRON_PTX_CACHE`, else
    /// `$XDG_CACHE_HOME/ferrotron/ptx` or `~/.cache/ferrotron/ptx`, else one in the temporary
    /// directory.
    pub fn default_dir() -> PathBuf {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(d) = env("FERROTRON_PTX_CACHE") {
            return PathBuf::from(d);
        }
        env("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("ferrotron").join("ptx"))
            .unwrap_or_else(|| std::env::temp_dir().join("ferrotron-ptx"))
    }

    /// The process-wide cache ([`FusedCache::default_dir`], NVRTC from [`Nvrtc::from_env`]),
    /// made on first use. The outcome of that first attempt stays for the life of the process.
    ///
    /// # Errors
    /// [`Error::NvrtcUnavailable`] when NVRTC cannot be loaded; an unusable directory as in
    /// [`FusedCache::new`].
    pub fn global() -> Result<&'static FusedCache> {
        static GLOBAL: OnceLock<Result<FusedCache>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| FusedCache::new(&FusedCache::default_dir(), Nvrtc::from_env()?))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// How many times this cache ran NVRTC (hits do not count).
    pub fn compiles(&self) -> usize {
        self.ptx.compiles()
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        self.ptx.dir()
    }

    /// The compiler's identity, as it enters the cache key.
    pub fn compiler(&self) -> &str {
        self.ptx.compiler_version()
    }
}

/// A fused elementwise kernel compiled for every backend. Cheap to clone; `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Fused {
    kernel: Arc<Kernel>,
    ptx: Arc<str>,
    /// The expression's graph as plain data (an [`Expr`] is not `Send`): the CPU backend
    /// rebuilds the expression from it to evaluate.
    nodes: Arc<[Node]>,
    root: NodeId,
    /// One value per row (the expression reduces along rows): the output is `[rows]`.
    per_row: bool,
}

impl Fused {
    /// Emits, compiles (NVRTC, through the process-wide [`FusedCache::global`]) and returns the
    /// kernel computing `expr` into an output of type `out`.
    ///
    /// # Errors
    /// [`Error::NvrtcUnavailable`] without NVRTC, [`Error::KernelCompile`] with NVRTC's log if it
    /// rejects the kernel, [`Error::InvalidArgument`] when two inputs share a name.
    pub fn compile(expr: &Expr, out: Dtype) -> Result<Fused> {
        Fused::compile_in(expr, out, FusedCache::global()?)
    }

    /// [`Fused::compile`] through a given cache.
    ///
    /// # Errors
    /// As [`Fused::compile`].
    pub fn compile_in(expr: &Expr, out: Dtype, cache: &FusedCache) -> Result<Fused> {
        let kernel = codegen::emit::elementwise(expr, out);
        for (i, (name, ..)) in kernel.inputs.iter().enumerate() {
            if kernel.inputs[..i].iter().any(|(n, ..)| n == name) {
                return Err(Error::invalid(
                    "Fused::compile",
                    format!("input {name}"),
                    "two inputs share this name (arguments are bound by name)",
                ));
            }
        }
        let ptx = cache
            .ptx
            .ptx(&kernel.source)
            .map_err(|e| Error::KernelCompile {
                kernel: kernel.name.clone(),
                compiler: cache.compiler().to_string(),
                log: match e {
                    RunError::Compile(log) => log,
                    other => other.to_string(),
                },
            })?;
        if !ptx.contains(&kernel.name) || ptx.contains('\0') {
            return Err(Error::KernelCompile {
                kernel: kernel.name.clone(),
                compiler: cache.compiler().to_string(),
                log: format!(
                    "the PTX (cached in {}) does not define the kernel; delete the cache file",
                    cache.dir().display()
                ),
            });
        }
        let per_row = kernel.per_row;
        Ok(Fused {
            kernel: Arc::new(kernel),
            ptx: ptx.into(),
            nodes: expr.graph().nodes().into(),
            root: expr.id(),
            per_row,
        })
    }

    /// The kernel's name (`ft_fused_<hash>`).
    pub fn name(&self) -> &str {
        &self.kernel.name
    }

    /// The generated CUDA C.
    pub fn source(&self) -> &str {
        &self.kernel.source
    }

    /// The compiled PTX.
    pub fn ptx(&self) -> &str {
        &self.ptx
    }

    /// The generated kernel (its inputs, parameter layout, canonical expression).
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The output element type.
    pub fn out_dtype(&self) -> Dtype {
        self.kernel.out
    }

    /// Whether the kernel writes one value per row (its expression reduces along rows): the
    /// output is then the leading dimensions of the `[.., cols]` iteration space.
    pub fn per_row(&self) -> bool {
        self.per_row
    }

    /// The inputs in declaration order: name, element type, broadcast.
    pub fn inputs(&self) -> &[(String, Dtype, Bcast)] {
        &self.kernel.inputs
    }

    /// The expression, rebuilt in a new graph (the same canonical form).
    pub fn expr(&self) -> Expr {
        rebuild(&self.nodes, self.root)
    }

    /// Starts binding this kernel's arguments by name; finish with [`Bind::run`].
    pub fn bind(&self) -> Bind<'_> {
        let n = self.kernel.inputs.len();
        Bind {
            fused: self,
            args: vec![None; n],
            error: None,
        }
    }
}

/// One bound argument.
#[derive(Clone, Copy)]
enum Arg<'a> {
    Tensor(&'a Tensor),
    Scalar(f32),
}

/// A [`Fused`] kernel's arguments, bound by name. Binding never fails on the spot: the first
/// mistake (an unknown name, a name bound twice, a tensor for a scalar input or the reverse) is
/// reported by [`Bind::run`], with every other check.
pub struct Bind<'a> {
    fused: &'a Fused,
    args: Vec<Option<Arg<'a>>>,
    error: Option<Error>,
}

impl<'a> Bind<'a> {
    fn set(mut self, name: &str, arg: Arg<'a>) -> Self {
        if self.error.is_some() {
            return self;
        }
        let inputs = &self.fused.kernel.inputs;
        let Some(i) = inputs.iter().position(|(n, ..)| n == name) else {
            let names: Vec<&str> = inputs.iter().map(|(n, ..)| n.as_str()).collect();
            self.error = Some(Error::invalid(
                OP,
                format!("input {name}"),
                format!(
                    "the kernel has no such input (its inputs: {})",
                    names.join(", ")
                ),
            ));
            return self;
        };
        let scalar = inputs[i].2 == Bcast::Scalar;
        let why = match (&arg, scalar) {
            _ if self.args[i].is_some() => Some("it is bound twice"),
            (Arg::Tensor(_), true) => Some("it is a scalar input: bind it with .scalar()"),
            (Arg::Scalar(_), false) => Some("it is a tensor input: bind it with .tensor()"),
            _ => None,
        };
        match why {
            Some(why) => self.error = Some(Error::invalid(OP, format!("input {name}"), why)),
            None => self.args[i] = Some(arg),
        }
        self
    }

    /// Binds the tensor input `name`.
    pub fn tensor(self, name: &str, t: &'a Tensor) -> Self {
        self.set(name, Arg::Tensor(t))
    }

    /// Binds the scalar input `name` (rounded to its declared element type).
    pub fn scalar(self, name: &str, v: f32) -> Self {
        self.set(name, Arg::Scalar(v))
    }

    /// Validates every argument and the output, then enqueues the kernel on `stream` (emu,
    /// CUDA, or the evaluator on the CPU backend). Asynchronous like every op.
    ///
    /// # Errors
    /// The first binding mistake ([`Error::InvalidArgument`]), an unbound input
    /// ([`Error::InvalidArgument`]), a wrong dtype ([`Error::DTypeMismatch`]), shape
    /// ([`Error::ShapeMismatch`], [`Error::RankMismatch`], [`Error::ZeroDim`]) or device
    /// ([`Error::DeviceMismatch`]), an output aliasing an input ([`Error::Aliasing`]), or a
    /// failure to load the kernel.
    pub fn run(self, stream: &Stream, out: &mut Tensor) -> Result<()> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let f = self.fused;
        let k = &f.kernel;
        if out.shape().rank() == 0 {
            return Err(Error::RankMismatch {
                op: OP,
                what: "out (at least)".into(),
                expected: 1,
                got: out.dims().to_vec(),
            });
        }
        if out.shape().has_zero_dim() {
            return Err(Error::ZeroDim {
                op: OP,
                what: "out".into(),
                shape: out.dims().to_vec(),
            });
        }
        let want = dtype_of(k.out);
        if out.dtype() != want {
            return Err(Error::DTypeMismatch {
                op: OP,
                what: "out".into(),
                expected: want,
                got: out.dtype(),
            });
        }
        // The iteration space `[rows, cols]`: the output's shape, or for a per-row kernel the
        // output's elements times the row length of its first full input (or row vector).
        let (rows, cols, space) = if f.per_row {
            let rows = out.numel();
            let cols = k
                .inputs
                .iter()
                .zip(&self.args)
                .find_map(|((_, _, b), a)| match (b, a) {
                    (Bcast::Full, Some(Arg::Tensor(t))) => Some(t.shape().last()),
                    _ => None,
                })
                .or_else(|| {
                    k.inputs
                        .iter()
                        .zip(&self.args)
                        .find_map(|((_, _, b), a)| match (b, a) {
                            (Bcast::Row, Some(Arg::Tensor(t))) => Some(t.numel()),
                            _ => None,
                        })
                })
                .ok_or_else(|| {
                    Error::invalid(
                        OP,
                        "inputs",
                        "a per-row kernel needs a full or row input to give the row length",
                    )
                })?;
            let mut space = out.dims().to_vec();
            space.push(cols);
            (rows, cols, space)
        } else {
            (out.shape().rows(), out.shape().last(), out.dims().to_vec())
        };
        let lead = &space[..space.len() - 1];
        let mut reads: Vec<(&str, &Tensor)> = Vec::new();
        let mut scalars = Vec::new();
        // Per input, in declaration order: `Some(v)` for a scalar, `None` for the next read.
        let mut plan: Vec<Option<f32>> = Vec::new();
        for ((name, dtype, bcast), arg) in k.inputs.iter().zip(&self.args) {
            match arg {
                None => {
                    return Err(Error::invalid(
                        OP,
                        format!("input {name}"),
                        format!(
                            "not bound (bind it with .{}(\"{name}\", ..))",
                            if *bcast == Bcast::Scalar {
                                "scalar"
                            } else {
                                "tensor"
                            }
                        ),
                    ))
                }
                Some(Arg::Scalar(v)) => {
                    let v = dtype.round(*v);
                    scalars.push(v);
                    plan.push(Some(v));
                }
                Some(Arg::Tensor(t)) => {
                    if t.dtype() != dtype_of(*dtype) {
                        return Err(Error::DTypeMismatch {
                            op: OP,
                            what: name.clone(),
                            expected: dtype_of(*dtype),
                            got: t.dtype(),
                        });
                    }
                    let ok = match bcast {
                        Bcast::Full => t.dims() == space.as_slice(),
                        Bcast::Row => t.dims() == [cols],
                        Bcast::Col => t.dims() == [rows] || (!lead.is_empty() && t.dims() == lead),
                        Bcast::Scalar => false,
                    };
                    if !ok {
                        let expected = match bcast {
                            Bcast::Row => vec![cols],
                            Bcast::Col => vec![rows],
                            _ => space.clone(),
                        };
                        return Err(Error::ShapeMismatch {
                            op: OP,
                            what: format!("{name} ({bcast:?} broadcast of the output)"),
                            expected,
                            got: t.dims().to_vec(),
                        });
                    }
                    reads.push((name.as_str(), t));
                    plan.push(None);
                }
            }
        }
        let writes = [("out", &*out)];
        prepare_kernel(stream, OP, &reads, &writes)?;
        if stream.device().kind() == BackendKind::Cpu {
            let nodes = f.nodes.clone();
            let root = f.root;
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                evaluate_on_host(l, &nodes, root, &plan, rows, cols)
            });
            return Ok(());
        }
        let key = format!("fused/{}", k.name);
        let inputs: Vec<&Tensor> = reads.iter().map(|(_, t)| *t).collect();
        let code = launch::Code::Ptx {
            key: &key,
            ptx: &f.ptx,
        };
        launch::launch(stream, OP, code, k, &inputs, out, rows, cols, &scalars)
    }
}

/// The CPU backend's run: the evaluator over the locked inputs, rounded into the output.
fn evaluate_on_host(
    l: &mut Locked<'_>,
    nodes: &[Node],
    root: NodeId,
    plan: &[Option<f32>],
    rows: usize,
    cols: usize,
) -> Result<()> {
    let (r, mut w) = l.io();
    let mut reads = r.iter();
    let values: Vec<Vec<f64>> = plan
        .iter()
        .map(|p| match p {
            Some(v) => vec![f64::from(*v)],
            None => reads.next().map(|h| h.to_f64()).unwrap_or_default(),
        })
        .collect();
    let slices: Vec<&[f64]> = values.iter().map(Vec::as_slice).collect();
    let expr = rebuild(nodes, root);
    let ev = codegen::eval::evaluate(&expr, rows, cols, &slices)
        .map_err(|e| Error::invalid(OP, "inputs", e.to_string()))?;
    match w.first_mut().map(|h| &mut **h) {
        Some(h) if h.len() != ev.values.len() => {
            return Err(Error::invalid(
                OP,
                "out",
                format!(
                    "{} elements, the evaluator gave {}",
                    h.len(),
                    ev.values.len()
                ),
            ))
        }
        Some(HostData::F32(o)) => {
            for (o, v) in o.iter_mut().zip(&ev.values) {
                *o = *v as f32;
            }
        }
        Some(HostData::BF16(o)) => {
            for (o, v) in o.iter_mut().zip(&ev.values) {
                *o = half::bf16::from_f64(*v);
            }
        }
        _ => return Err(Error::invalid(OP, "out", "not an f32 or bf16 host buffer")),
    }
    Ok(())
}

/// Rebuilds the expression rooted at `root` from a graph's nodes (in id order, so operands come
/// before their users), in a new graph.
fn rebuild(nodes: &[Node], root: NodeId) -> Expr {
    let g = Graph::new();
    let mut map: Vec<Expr> = Vec::with_capacity(nodes.len());
    for node in nodes {
        let e = match node {
            Node::Input {
                name, dtype, bcast, ..
            } => g.input(name, *dtype, *bcast),
            Node::Const(bits) => g.constant(f64::from(f32::from_bits(*bits))),
            Node::Unary(op, a) => {
                let a = &map[*a];
                match op {
                    UnOp::Neg => -a,
                    UnOp::Abs => a.abs(),
                    UnOp::Exp => a.exp(),
                    UnOp::Log => a.log(),
                    UnOp::Tanh => a.tanh(),
                    UnOp::Erf => a.erf(),
                    UnOp::Sqrt => a.sqrt(),
                    UnOp::Rsqrt => a.rsqrt(),
                    UnOp::Gelu => gelu(a.clone()),
                    UnOp::GeluGrad => gelu_grad(a.clone()),
                }
            }
            Node::Binary(op, a, b) => {
                let (a, b) = (&map[*a], &map[*b]);
                match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div => a / b,
                    BinOp::Max => a.max(b),
                    BinOp::Min => a.min(b),
                }
            }
            Node::Cmp(op, a, b) => map[*a].cmp(*op, &map[*b]),
            Node::Select(c, a, b) => map[*c].select(&map[*a], &map[*b]),
            Node::Cast(d, a) => map[*a].cast(*d),
            Node::Reduce(op, a) => map[*a].reduce(*op),
        };
        map.push(e);
    }
    map.swap_remove(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use codegen::expr::CmpOp;

    #[test]
    fn a_rebuilt_expression_has_the_same_canonical_form() {
        let g = Graph::new();
        let x = g.input("x", Dtype::Bf16, Bcast::Full);
        let b = g.input("b", Dtype::F32, Bcast::Row);
        let s = g.input("s", Dtype::F32, Bcast::Scalar);
        let y = (gelu(&x + &b) * &s).max(&x.tanh().exp())
            - x.cmp(CmpOp::Gt, &g.constant(0.5))
                .select(&b.abs().sqrt(), &(-&x).cast(Dtype::Bf16));
        let r = rebuild(&g.nodes(), y.id());
        assert_eq!(r.canonical(), y.canonical());
        assert_eq!(
            codegen::emit::elementwise(&r, Dtype::F32),
            codegen::emit::elementwise(&y, Dtype::F32)
        );
    }
}
