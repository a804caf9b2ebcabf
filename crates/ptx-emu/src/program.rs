//! The decoded form the interpreter runs: registers are slot numbers, labels are instruction
//! indices, symbols are resolved to (space, offset), and every opcode form is one enum variant
//! with its modifiers already interpreted. Decoding happens once per module
//! ([`crate::Module::parse`]); an opcode form the emulator does not implement is an error at
//! that point, naming the line, so nothing unsupported can run silently.

use crate::ast::{self, Operand, Space, Statement, Type};
use crate::error::{EmuError, Result};
use crate::numerics::{FloatCmp, FloatRound, IntRound};
use std::collections::HashMap;

/// A special register (PTX ISA 10 "Special Registers").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sreg {
    /// `%tid.{x,y,z}`
    Tid(u8),
    /// `%ntid.{x,y,z}`
    Ntid(u8),
    /// `%ctaid.{x,y,z}`
    Ctaid(u8),
    /// `%nctaid.{x,y,z}`
    Nctaid(u8),
    /// `%laneid`
    LaneId,
    /// `%warpid`
    WarpId,
    /// `%nwarpid`
    NWarpId,
    /// `%smid`
    SmId,
    /// `%nsmid`
    NSmId,
    /// `%lanemask_eq`
    LanemaskEq,
    /// `%lanemask_lt`
    LanemaskLt,
    /// `%lanemask_le`
    LanemaskLe,
    /// `%lanemask_gt`
    LanemaskGt,
    /// `%lanemask_ge`
    LanemaskGe,
    /// `%clock` (the thread's executed-instruction count: deterministic).
    Clock,
    /// `%clock64`
    Clock64,
    /// `%globaltimer` (also the instruction count).
    GlobalTimer,
    /// `%dynamic_smem_size`
    DynamicSmemSize,
    /// `%total_smem_size`
    TotalSmemSize,
}

fn sreg(name: &str) -> Option<Sreg> {
    let dim = |s: &str| match s {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    if let Some((base, d)) = name.split_once('.') {
        let d = dim(d)?;
        return Some(match base {
            "%tid" => Sreg::Tid(d),
            "%ntid" => Sreg::Ntid(d),
            "%ctaid" => Sreg::Ctaid(d),
            "%nctaid" => Sreg::Nctaid(d),
            _ => return None,
        });
    }
    Some(match name {
        "%laneid" => Sreg::LaneId,
        "%warpid" => Sreg::WarpId,
        "%nwarpid" => Sreg::NWarpId,
        "%smid" => Sreg::SmId,
        "%nsmid" => Sreg::NSmId,
        "%lanemask_eq" => Sreg::LanemaskEq,
        "%lanemask_lt" => Sreg::LanemaskLt,
        "%lanemask_le" => Sreg::LanemaskLe,
        "%lanemask_gt" => Sreg::LanemaskGt,
        "%lanemask_ge" => Sreg::LanemaskGe,
        "%clock" => Sreg::Clock,
        "%clock64" => Sreg::Clock64,
        "%globaltimer" => Sreg::GlobalTimer,
        "%dynamic_smem_size" => Sreg::DynamicSmemSize,
        "%total_smem_size" => Sreg::TotalSmemSize,
        _ => return None,
    })
}

/// A source operand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Src {
    /// A register slot.
    Reg(u32),
    /// A predicate register, negated (`!%p1`).
    NotReg(u32),
    /// Immediate bits (already in the instruction type's encoding).
    Imm(u64),
    /// A special register.
    Sreg(Sreg),
    /// The address of a symbol in its state space (`mov.u64 %rd1, smem;`) plus an offset.
    Symbol(u32, i64),
}

/// Where a symbol lives.
#[derive(Clone, Debug, PartialEq)]
pub struct Symbol {
    /// Its name.
    pub name: String,
    /// Its state space.
    pub space: Space,
    /// Offset in the param buffer / CTA shared window / thread local window; for `.global` and
    /// `.const` module variables, the index into [`Program::globals`].
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The base of an address operand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Base {
    /// A register holding an address.
    Reg(u32),
    /// A symbol (its address in the instruction's space).
    Symbol(u32),
    /// No base (absolute address).
    None,
}

/// `[base+offset]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Addr {
    /// The base.
    pub base: Base,
    /// The constant offset.
    pub offset: i64,
}

/// Integer operations (binary or ternary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntOp {
    Add,
    Sub,
    MulLo,
    MulHi,
    MulWide,
    MadLo,
    MadHi,
    MadWide,
    Mul24Lo,
    Mad24Lo,
    Div,
    Rem,
    Min,
    Max,
    And,
    Or,
    Xor,
    Shl,
    Shr,
    Abs,
    Neg,
    Not,
    Cnot,
    Popc,
    Clz,
    Brev,
    Bfind,
    BfindShift,
    Sad,
}

/// Float operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatOp {
    Add,
    Sub,
    Mul,
    Fma,
    Div,
    Min,
    Max,
    Abs,
    Neg,
    Sqrt,
    Rcp,
    Rsqrt,
    Ex2,
    Lg2,
    Sin,
    Cos,
    Tanh,
    Copysign,
}

/// Boolean combiners of `setp` and predicate logic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoolOp {
    And,
    Or,
    Xor,
}

/// Integer comparisons of `setp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntCmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    /// On integers (signedness from the type).
    Int(IntCmp),
    /// On floats.
    Float(FloatCmp),
}

/// Memory ordering of a load or store (PTX ISA 8 "Memory Consistency Model").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sem {
    /// Plain (weak).
    Weak,
    /// `.volatile` / `.relaxed`.
    Relaxed,
    /// `.acquire`.
    Acquire,
    /// `.release`.
    Release,
}

/// Atomic operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomOp {
    Add,
    Min,
    Max,
    And,
    Or,
    Xor,
    Exch,
    Cas,
    Inc,
    Dec,
}

/// `shfl.sync` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

/// `vote.sync` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteMode {
    All,
    Any,
    Uni,
    Ballot,
}

/// One decoded operation.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `mov` (and `cvta` between identical spaces): copy `bits` bits.
    Mov { d: u32, a: Src, bits: u32 },
    /// `mov.bN d, {a, b, ...}`: pack parts, first part in the low bits.
    Pack {
        d: u32,
        parts: Vec<Src>,
        part_bits: u32,
    },
    /// `mov.bN {a, b, ...}, s`: split into parts (`None` = `_`).
    Unpack {
        ds: Vec<Option<u32>>,
        a: Src,
        part_bits: u32,
    },
    /// Integer arithmetic and logic.
    Int {
        op: IntOp,
        ty: Type,
        d: u32,
        a: Src,
        b: Src,
        c: Src,
        sat: bool,
    },
    /// Float arithmetic.
    Float {
        op: FloatOp,
        ty: Type,
        d: u32,
        a: Src,
        b: Src,
        c: Src,
        rnd: Option<FloatRound>,
        approx: bool,
        full: bool,
        ftz: bool,
        sat: bool,
        /// `min/max.NaN`: any NaN input gives the canonical NaN.
        nan: bool,
    },
    /// `setp.cmp[.bool].ty p[|q], a, b[, c]`.
    Setp {
        cmp: Cmp,
        ty: Type,
        d: u32,
        d2: Option<u32>,
        a: Src,
        b: Src,
        combine: Option<(BoolOp, Src)>,
    },
    /// `selp.ty d, a, b, p`.
    Selp {
        d: u32,
        a: Src,
        b: Src,
        p: Src,
        bits: u32,
    },
    /// Predicate logic: `and/or/xor.pred`, `not.pred` (b = None).
    PredLogic {
        op: Option<BoolOp>,
        d: u32,
        a: Src,
        b: Src,
    },
    /// `cvt` between scalar types.
    Cvt {
        d: u32,
        a: Src,
        dty: Type,
        sty: Type,
        frnd: Option<FloatRound>,
        irnd: Option<IntRound>,
        sat: bool,
        ftz: bool,
        relu: bool,
    },
    /// `cvt.rn[.relu].{bf16x2,f16x2}.f32 d, hi, lo`.
    CvtPack {
        d: u32,
        hi: Src,
        lo: Src,
        bf16: bool,
        relu: bool,
    },
    /// `cvta[.to].space`: generic <-> space address.
    Cvta {
        d: u32,
        a: Src,
        to_space: bool,
        space: Space,
        bits: u32,
    },
    /// Loads (`ds.len()` = vector width).
    Ld {
        space: Space,
        ty: Type,
        ds: Vec<Option<u32>>,
        addr: Addr,
        sem: Sem,
    },
    /// Stores.
    St {
        space: Space,
        ty: Type,
        srcs: Vec<Src>,
        addr: Addr,
        sem: Sem,
    },
    /// Atomics and reductions (`d = None` for `red`).
    Atom {
        space: Space,
        op: AtomOp,
        ty: Type,
        d: Option<u32>,
        addr: Addr,
        b: Src,
        c: Src,
        sem: Sem,
    },
    /// `bra` to an instruction index.
    Bra { target: u32 },
    /// `ret` / `exit` from the kernel.
    Exit,
    /// `bar.sync` / `barrier.sync` (`arrive` = `bar.arrive`: no wait).
    Bar {
        id: Src,
        count: Option<Src>,
        arrive: bool,
    },
    /// `bar.warp.sync mask`.
    WarpSync { mask: Src },
    /// `membar` / `fence`: ordering only (the interpreter is sequentially consistent).
    Fence,
    /// `shfl.sync`.
    Shfl {
        mode: ShflMode,
        d: u32,
        dp: Option<u32>,
        a: Src,
        b: Src,
        c: Src,
        mask: Src,
    },
    /// `vote.sync`.
    Vote {
        mode: VoteMode,
        d: u32,
        a: Src,
        mask: Src,
    },
    /// `redux.sync.op.ty`.
    Redux {
        op: IntOp,
        ty: Type,
        d: u32,
        a: Src,
        mask: Src,
    },
    /// `ldmatrix.sync.aligned.m8n8.xN[.trans].shared.b16`.
    Ldmatrix {
        num: u8,
        trans: bool,
        ds: Vec<u32>,
        addr: Addr,
    },
    /// `mma.sync.aligned.m16n8k{16,8}.row.col.f32.{bf16,f16}.{bf16,f16}.f32`.
    Mma {
        k: u8,
        bf16: bool,
        d: [u32; 4],
        a: Vec<Src>,
        b: Vec<Src>,
        c: [Src; 4],
    },
    /// `cp.async.{ca,cg}.shared.global [dst], [src], size[, src_size]`.
    CpAsync {
        dst: Addr,
        src: Addr,
        size: u32,
        src_size: Option<Src>,
    },
    /// `cp.async.commit_group`.
    CpAsyncCommit,
    /// `cp.async.wait_group n` (`cp.async.wait_all` = commit + wait 0).
    CpAsyncWait { n: u32, commit_first: bool },
    /// `prmt.b32 d, a, b, c` (default mode).
    Prmt { d: u32, a: Src, b: Src, c: Src },
    /// `bfe.{u,s}{32,64} d, a, pos, len`.
    Bfe {
        ty: Type,
        d: u32,
        a: Src,
        b: Src,
        c: Src,
    },
    /// `bfi.b{32,64} d, f, b, pos, len`.
    Bfi {
        ty: Type,
        d: u32,
        f: Src,
        b: Src,
        pos: Src,
        len: Src,
    },
    /// `lop3.b32 d, a, b, c, immLut`.
    Lop3 {
        d: u32,
        a: Src,
        b: Src,
        c: Src,
        lut: u8,
    },
    /// `shf.{l,r}.{wrap,clamp}.b32 d, a, b, c`.
    Shf {
        left: bool,
        clamp: bool,
        d: u32,
        a: Src,
        b: Src,
        c: Src,
    },
    /// `trap`.
    Trap,
    /// `activemask.b32 d`: the lanes of the warp that have not exited.
    ActiveMask { d: u32 },
    /// Anything that has no effect in the interpreter (`nanosleep`, `pmevent`, prefetch...).
    Nop,
}

/// Instruction class, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Integer arithmetic and logic, moves, conversions between integers.
    Integer,
    /// f32 arithmetic.
    Fp32,
    /// f64 arithmetic.
    Fp64,
    /// f16 / bf16 (scalar or x2) arithmetic.
    Fp16,
    /// `.approx` transcendental functions (the SFU).
    Special,
    /// `cvt`.
    Conversion,
    /// Global loads/stores/atomics.
    GlobalMemory,
    /// Shared-memory loads/stores/atomics, `ldmatrix`, `cp.async`.
    SharedMemory,
    /// Local / param / const loads and stores.
    OtherMemory,
    /// Branches, exit.
    Control,
    /// Barriers, fences, warp synchronisation and shuffles.
    Sync,
    /// Tensor cores (`mma`).
    Tensor,
}

impl Class {
    /// Every class, in declaration order (`Class::ALL[c as usize] == c`).
    pub const ALL: [Class; 12] = [
        Class::Integer,
        Class::Fp32,
        Class::Fp64,
        Class::Fp16,
        Class::Special,
        Class::Conversion,
        Class::GlobalMemory,
        Class::SharedMemory,
        Class::OtherMemory,
        Class::Control,
        Class::Sync,
        Class::Tensor,
    ];
}

/// One instruction.
#[derive(Clone, Debug, PartialEq)]
pub struct Inst {
    /// The operation.
    pub op: Op,
    /// Guard predicate slot and negation.
    pub guard: Option<(u32, bool)>,
    /// PTX source line.
    pub line: u32,
    /// Index into [`Kernel::forms`]: the opcode form as written (`ld.global.f32`).
    pub form: u32,
    /// Metrics class.
    pub class: Class,
}

/// A module-scope `.global` / `.const` variable (allocated per device at load time).
#[derive(Clone, Debug, PartialEq)]
pub struct GlobalVar {
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Alignment.
    pub align: u64,
    /// Initial bytes (zero-filled to `size`).
    pub init: Vec<u8>,
}

/// A decoded kernel.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// Its name.
    pub name: String,
    /// Instructions.
    pub insts: Vec<Inst>,
    /// Number of register slots.
    pub num_regs: u32,
    /// Parameter buffer size in bytes.
    pub param_bytes: u64,
    /// Parameter (offset, size) in declaration order.
    pub params: Vec<(String, u64, u64)>,
    /// Static shared memory bytes (module + function `.shared`).
    pub static_shared: u64,
    /// Offset of the dynamic (`.extern .shared`) region.
    pub dynamic_shared_offset: u64,
    /// Local memory per thread (`.local` variables).
    pub local_bytes: u64,
    /// Symbols referenced by instructions.
    pub symbols: Vec<Symbol>,
    /// `.maxntid`.
    pub maxntid: Option<[u32; 3]>,
    /// `.reqntid`.
    pub reqntid: Option<[u32; 3]>,
    /// Opcode forms as written, indexed by [`Inst::form`].
    pub forms: Vec<String>,
}

/// A decoded module.
#[derive(Clone, Debug, Default)]
pub struct Program {
    /// Kernels by name.
    pub kernels: HashMap<String, Kernel>,
    /// Module-scope `.global` / `.const` variables.
    pub globals: Vec<GlobalVar>,
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a.max(1)) * a.max(1)
}

struct Decoder<'m> {
    /// Register scopes, innermost last.
    scopes: Vec<HashMap<String, (u32, Type)>>,
    num_regs: u32,
    labels: HashMap<String, u32>,
    symbols: Vec<Symbol>,
    symbol_ids: HashMap<String, u32>,
    forms: Vec<String>,
    form_ids: HashMap<String, u32>,
    module: &'m ast::Module,
    globals: &'m [GlobalVar],
}

fn unsup(line: u32, what: impl Into<String>) -> EmuError {
    EmuError::unsupported(line, what)
}

/// Parsed modifiers of one instruction.
struct Mods<'a> {
    list: &'a [String],
    line: u32,
    form: String,
}

impl<'a> Mods<'a> {
    fn has(&self, m: &str) -> bool {
        self.list.iter().any(|x| x == m)
    }

    fn types(&self) -> Vec<Type> {
        self.list
            .iter()
            .filter_map(|m| Type::from_name(m))
            .collect()
    }

    fn ty(&self) -> Result<Type> {
        self.types()
            .last()
            .copied()
            .ok_or_else(|| unsup(self.line, format!("{}: no type modifier", self.form)))
    }

    fn space(&self) -> Space {
        for m in self.list {
            match m.as_str() {
                "global" => return Space::Global,
                "shared" => return Space::Shared,
                "local" => return Space::Local,
                "param" => return Space::Param,
                "const" => return Space::Const,
                _ => {}
            }
        }
        Space::Generic
    }

    fn frnd(&self) -> Option<FloatRound> {
        for m in self.list {
            match m.as_str() {
                "rn" => return Some(FloatRound::Rn),
                "rz" => return Some(FloatRound::Rz),
                "rm" => return Some(FloatRound::Rm),
                "rp" => return Some(FloatRound::Rp),
                _ => {}
            }
        }
        None
    }

    fn irnd(&self) -> Option<IntRound> {
        for m in self.list {
            match m.as_str() {
                "rni" => return Some(IntRound::Rni),
                "rzi" => return Some(IntRound::Rzi),
                "rmi" => return Some(IntRound::Rmi),
                "rpi" => return Some(IntRound::Rpi),
                _ => {}
            }
        }
        None
    }

    fn vector(&self) -> u32 {
        for m in self.list {
            if let Some(n) = m.strip_prefix('v').and_then(|n| n.parse::<u32>().ok()) {
                return n;
            }
        }
        1
    }

    fn sem(&self) -> Sem {
        if self.has("acquire") {
            Sem::Acquire
        } else if self.has("release") || self.has("acq_rel") {
            Sem::Release
        } else if self.has("relaxed") || self.has("volatile") {
            Sem::Relaxed
        } else {
            Sem::Weak
        }
    }

    /// Rejects any modifier not in `allowed` (types are always allowed).
    fn only(&self, allowed: &[&str]) -> Result<()> {
        for m in self.list {
            if Type::from_name(m).is_some() || allowed.contains(&m.as_str()) {
                continue;
            }
            return Err(unsup(self.line, format!("{} (modifier .{m})", self.form)));
        }
        Ok(())
    }
}

fn encode_float_imm(bits: u64, is_f32: bool, ty: Type) -> u64 {
    match ty {
        Type::F32 | Type::B32 | Type::F16x2 | Type::Bf16x2 => {
            if is_f32 {
                bits
            } else {
                u64::from((f64::from_bits(bits) as f32).to_bits())
            }
        }
        Type::F64 | Type::B64 => {
            if is_f32 {
                f64::from(f32::from_bits(bits as u32)).to_bits()
            } else {
                bits
            }
        }
        _ => bits,
    }
}

fn mask_bits(v: u64, bits: u32) -> u64 {
    if bits >= 64 {
        v
    } else {
        v & ((1u64 << bits) - 1)
    }
}

impl<'m> Decoder<'m> {
    fn reg(&self, name: &str, line: u32) -> Result<u32> {
        for s in self.scopes.iter().rev() {
            if let Some((r, _)) = s.get(name) {
                return Ok(*r);
            }
        }
        Err(EmuError::parse(line, format!("undeclared register {name}")))
    }

    fn symbol(&mut self, name: &str) -> Option<u32> {
        self.symbol_ids.get(name).copied()
    }

    fn add_symbol(&mut self, sym: Symbol) -> u32 {
        let id = self.symbols.len() as u32;
        self.symbol_ids.insert(sym.name.clone(), id);
        self.symbols.push(sym);
        id
    }

    fn src(&mut self, op: &Operand, ty: Type, line: u32) -> Result<Src> {
        let bits = ty.bits().min(64);
        Ok(match op {
            Operand::Name(n) => {
                if let Some(stripped) = n.strip_prefix('!') {
                    Src::NotReg(self.reg(stripped, line)?)
                } else if let Some(s) = sreg(n) {
                    Src::Sreg(s)
                } else if let Ok(r) = self.reg(n, line) {
                    Src::Reg(r)
                } else if let Some(id) = self.symbol(n) {
                    Src::Symbol(id, 0)
                } else if let Some(&pc) = self.labels.get(n) {
                    Src::Imm(u64::from(pc))
                } else {
                    return Err(EmuError::parse(line, format!("unknown name {n}")));
                }
            }
            Operand::Int(v) => {
                if ty.is_float() {
                    let f = *v as f64;
                    let b = match ty {
                        Type::F64 => f.to_bits(),
                        _ => u64::from((f as f32).to_bits()),
                    };
                    Src::Imm(b)
                } else {
                    Src::Imm(mask_bits(*v as u64, bits))
                }
            }
            Operand::Float { bits: b, is_f32 } => Src::Imm(encode_float_imm(*b, *is_f32, ty)),
            Operand::Address {
                base: Some(n),
                offset,
            } => match self.symbol(n) {
                Some(id) => Src::Symbol(id, *offset),
                None => return Err(EmuError::parse(line, format!("unknown symbol {n}"))),
            },
            other => return Err(unsup(line, format!("operand {other:?}"))),
        })
    }

    fn dst(&self, op: &Operand, line: u32) -> Result<u32> {
        match op {
            Operand::Name(n) => self.reg(n, line),
            other => Err(unsup(line, format!("destination {other:?}"))),
        }
    }

    fn opt_dst(&self, op: &Operand, line: u32) -> Result<Option<u32>> {
        match op {
            Operand::Sink => Ok(None),
            o => self.dst(o, line).map(Some),
        }
    }

    fn addr(&mut self, op: &Operand, line: u32) -> Result<Addr> {
        match op {
            Operand::Address { base, offset } => {
                let base = match base {
                    None => Base::None,
                    Some(n) => {
                        if let Ok(r) = self.reg(n, line) {
                            Base::Reg(r)
                        } else if let Some(id) = self.symbol(n) {
                            Base::Symbol(id)
                        } else {
                            return Err(EmuError::parse(line, format!("unknown address base {n}")));
                        }
                    }
                };
                Ok(Addr {
                    base,
                    offset: *offset,
                })
            }
            other => Err(unsup(line, format!("expected an address, found {other:?}"))),
        }
    }

    fn form_id(&mut self, form: &str) -> u32 {
        if let Some(&id) = self.form_ids.get(form) {
            return id;
        }
        let id = self.forms.len() as u32;
        self.forms.push(form.to_string());
        self.form_ids.insert(form.to_string(), id);
        id
    }

    fn inst(&mut self, ins: &ast::Instruction) -> Result<(Op, Class)> {
        let line = ins.line;
        let form = ins.full_opcode();
        let m = Mods {
            list: &ins.modifiers,
            line,
            form: form.clone(),
        };
        let ops = &ins.operands;
        let o = |i: usize| self_operand(ops, i, line, &form);
        macro_rules! s {
            ($i:expr, $ty:expr) => {
                self.src(o($i)?, $ty, line)?
            };
        }
        macro_rules! d {
            ($i:expr) => {
                self.dst(o($i)?, line)?
            };
        }
        let none = Src::Imm(0);
        let class_for = |ty: Type| match ty {
            Type::F32 => Class::Fp32,
            Type::F64 => Class::Fp64,
            Type::F16 | Type::F16x2 | Type::Bf16 | Type::Bf16x2 => Class::Fp16,
            _ => Class::Integer,
        };
        let op = ins.opcode.as_str();
        Ok(match op {
            "mov" => {
                m.only(&[])?;
                let ty = m.ty()?;
                let bits = ty.bits().min(64);
                match (o(0)?, o(1)?) {
                    (Operand::Vector(parts), src) => {
                        let part_bits = bits / parts.len() as u32;
                        let ds = parts
                            .iter()
                            .map(|p| self.opt_dst(p, line))
                            .collect::<Result<Vec<_>>>()?;
                        let a = self.src(src, ty, line)?;
                        (Op::Unpack { ds, a, part_bits }, Class::Integer)
                    }
                    (dst, Operand::Vector(parts)) => {
                        let part_bits = bits / parts.len() as u32;
                        let pty = match part_bits {
                            8 => Type::B8,
                            16 => Type::B16,
                            32 => Type::B32,
                            _ => Type::B64,
                        };
                        let d = self.dst(dst, line)?;
                        let parts = parts
                            .iter()
                            .map(|p| self.src(p, pty, line))
                            .collect::<Result<Vec<_>>>()?;
                        (
                            Op::Pack {
                                d,
                                parts,
                                part_bits,
                            },
                            Class::Integer,
                        )
                    }
                    _ => (
                        Op::Mov {
                            d: d!(0),
                            a: s!(1, ty),
                            bits,
                        },
                        Class::Integer,
                    ),
                }
            }
            "add" | "sub" | "mul" | "mad" | "fma" | "div" | "rem" | "min" | "max" | "and"
            | "or" | "xor" | "shl" | "shr" | "abs" | "neg" | "not" | "cnot" | "popc" | "clz"
            | "brev" | "sqrt" | "rcp" | "rsqrt" | "ex2" | "lg2" | "sin" | "cos" | "tanh"
            | "copysign" | "bfind" | "sad" | "mul24" | "mad24" => {
                let ty = m.ty()?;
                if ty == Type::Pred {
                    let opn = match op {
                        "and" => Some(BoolOp::And),
                        "or" => Some(BoolOp::Or),
                        "xor" => Some(BoolOp::Xor),
                        "not" => None,
                        _ => return Err(unsup(line, form)),
                    };
                    let d = d!(0);
                    let a = s!(1, ty);
                    let b = if opn.is_some() { s!(2, ty) } else { none };
                    return Ok((Op::PredLogic { op: opn, d, a, b }, Class::Integer));
                }
                if ty.is_float() || matches!(ty, Type::F16x2 | Type::Bf16x2) {
                    m.only(&[
                        "rn", "rz", "rm", "rp", "ftz", "sat", "approx", "full", "NaN",
                    ])?;
                    let fop = match op {
                        "add" => FloatOp::Add,
                        "sub" => FloatOp::Sub,
                        "mul" => FloatOp::Mul,
                        "fma" | "mad" => FloatOp::Fma,
                        "div" => FloatOp::Div,
                        "min" => FloatOp::Min,
                        "max" => FloatOp::Max,
                        "abs" => FloatOp::Abs,
                        "neg" => FloatOp::Neg,
                        "sqrt" => FloatOp::Sqrt,
                        "rcp" => FloatOp::Rcp,
                        "rsqrt" => FloatOp::Rsqrt,
                        "ex2" => FloatOp::Ex2,
                        "lg2" => FloatOp::Lg2,
                        "sin" => FloatOp::Sin,
                        "cos" => FloatOp::Cos,
                        "tanh" => FloatOp::Tanh,
                        "copysign" => FloatOp::Copysign,
                        _ => return Err(unsup(line, form)),
                    };
                    let nsrc = match fop {
                        FloatOp::Fma => 3,
                        FloatOp::Abs
                        | FloatOp::Neg
                        | FloatOp::Sqrt
                        | FloatOp::Rcp
                        | FloatOp::Rsqrt
                        | FloatOp::Ex2
                        | FloatOp::Lg2
                        | FloatOp::Sin
                        | FloatOp::Cos
                        | FloatOp::Tanh => 1,
                        _ => 2,
                    };
                    let supported_ty = match fop {
                        FloatOp::Add | FloatOp::Sub | FloatOp::Mul | FloatOp::Fma => matches!(
                            ty,
                            Type::F32
                                | Type::F64
                                | Type::Bf16
                                | Type::Bf16x2
                                | Type::F16
                                | Type::F16x2
                        ),
                        FloatOp::Abs | FloatOp::Neg | FloatOp::Min | FloatOp::Max => {
                            matches!(
                                ty,
                                Type::F32
                                    | Type::F64
                                    | Type::Bf16
                                    | Type::Bf16x2
                                    | Type::F16
                                    | Type::F16x2
                            )
                        }
                        FloatOp::Div | FloatOp::Sqrt | FloatOp::Rcp | FloatOp::Copysign => {
                            matches!(ty, Type::F32 | Type::F64)
                        }
                        _ => ty == Type::F32,
                    };
                    if !supported_ty {
                        return Err(unsup(line, form));
                    }
                    let d = d!(0);
                    let a = s!(1, ty);
                    let b = if nsrc >= 2 { s!(2, ty) } else { none };
                    let c = if nsrc >= 3 { s!(3, ty) } else { none };
                    let approx = m.has("approx");
                    let class = if (approx && ty == Type::F32 && fop != FloatOp::Div)
                        || fop == FloatOp::Tanh
                    {
                        Class::Special
                    } else {
                        class_for(ty)
                    };
                    (
                        Op::Float {
                            op: fop,
                            ty,
                            d,
                            a,
                            b,
                            c,
                            rnd: m.frnd(),
                            approx,
                            full: m.has("full"),
                            nan: m.has("NaN"),
                            ftz: m.has("ftz"),
                            sat: m.has("sat"),
                        },
                        class,
                    )
                } else {
                    m.only(&["lo", "hi", "wide", "sat", "shiftamt"])?;
                    let iop = match op {
                        "add" => IntOp::Add,
                        "sub" => IntOp::Sub,
                        "mul" if m.has("hi") => IntOp::MulHi,
                        "mul" if m.has("wide") => IntOp::MulWide,
                        "mul" => IntOp::MulLo,
                        "mad" if m.has("hi") => IntOp::MadHi,
                        "mad" if m.has("wide") => IntOp::MadWide,
                        "mad" => IntOp::MadLo,
                        "mul24" if !m.has("hi") => IntOp::Mul24Lo,
                        "mad24" if !m.has("hi") => IntOp::Mad24Lo,
                        "div" => IntOp::Div,
                        "rem" => IntOp::Rem,
                        "min" => IntOp::Min,
                        "max" => IntOp::Max,
                        "and" => IntOp::And,
                        "or" => IntOp::Or,
                        "xor" => IntOp::Xor,
                        "shl" => IntOp::Shl,
                        "shr" => IntOp::Shr,
                        "abs" => IntOp::Abs,
                        "neg" => IntOp::Neg,
                        "not" => IntOp::Not,
                        "cnot" => IntOp::Cnot,
                        "popc" => IntOp::Popc,
                        "clz" => IntOp::Clz,
                        "brev" => IntOp::Brev,
                        "bfind" if m.has("shiftamt") => IntOp::BfindShift,
                        "bfind" => IntOp::Bfind,
                        "sad" => IntOp::Sad,
                        _ => return Err(unsup(line, form)),
                    };
                    let nsrc = match iop {
                        IntOp::MadLo
                        | IntOp::MadHi
                        | IntOp::MadWide
                        | IntOp::Mad24Lo
                        | IntOp::Sad => 3,
                        IntOp::Abs
                        | IntOp::Neg
                        | IntOp::Not
                        | IntOp::Cnot
                        | IntOp::Popc
                        | IntOp::Clz
                        | IntOp::Brev
                        | IntOp::Bfind
                        | IntOp::BfindShift => 1,
                        _ => 2,
                    };
                    if m.has("sat")
                        && !(ty == Type::S32
                            && matches!(iop, IntOp::Add | IntOp::Sub | IntOp::MadHi))
                    {
                        return Err(unsup(line, form));
                    }
                    // Shift amounts are always .u32; wide results are twice the type.
                    let bty = if matches!(iop, IntOp::Shl | IntOp::Shr) {
                        Type::U32
                    } else {
                        ty
                    };
                    let cty = if matches!(iop, IntOp::MadWide) {
                        match ty {
                            Type::S16 => Type::S32,
                            Type::U16 => Type::U32,
                            Type::S32 => Type::S64,
                            _ => Type::U64,
                        }
                    } else {
                        ty
                    };
                    let d = d!(0);
                    let a = s!(1, ty);
                    let b = if nsrc >= 2 { s!(2, bty) } else { none };
                    let c = if nsrc >= 3 { s!(3, cty) } else { none };
                    (
                        Op::Int {
                            op: iop,
                            ty,
                            d,
                            a,
                            b,
                            c,
                            sat: m.has("sat"),
                        },
                        Class::Integer,
                    )
                }
            }
            "setp" => {
                let ty = m.ty()?;
                let mut cmp = None;
                let mut combine_op = None;
                for x in m.list {
                    let c = match x.as_str() {
                        "eq" => Some(Cmp::Int(IntCmp::Eq)),
                        "ne" => Some(Cmp::Int(IntCmp::Ne)),
                        "lt" | "lo" => Some(Cmp::Int(IntCmp::Lt)),
                        "le" | "ls" => Some(Cmp::Int(IntCmp::Le)),
                        "gt" | "hi" => Some(Cmp::Int(IntCmp::Gt)),
                        "ge" | "hs" => Some(Cmp::Int(IntCmp::Ge)),
                        "equ" => Some(Cmp::Float(FloatCmp::Equ)),
                        "neu" => Some(Cmp::Float(FloatCmp::Neu)),
                        "ltu" => Some(Cmp::Float(FloatCmp::Ltu)),
                        "leu" => Some(Cmp::Float(FloatCmp::Leu)),
                        "gtu" => Some(Cmp::Float(FloatCmp::Gtu)),
                        "geu" => Some(Cmp::Float(FloatCmp::Geu)),
                        "num" => Some(Cmp::Float(FloatCmp::Num)),
                        "nan" => Some(Cmp::Float(FloatCmp::Nan)),
                        "and" => {
                            combine_op = Some(BoolOp::And);
                            None
                        }
                        "or" => {
                            combine_op = Some(BoolOp::Or);
                            None
                        }
                        "xor" => {
                            combine_op = Some(BoolOp::Xor);
                            None
                        }
                        "ftz" => None,
                        t if Type::from_name(t).is_some() => None,
                        other => return Err(unsup(line, format!("{form} (.{other})"))),
                    };
                    if c.is_some() {
                        cmp = c;
                    }
                }
                let mut cmp = cmp.ok_or_else(|| unsup(line, format!("{form}: no comparison")))?;
                if ty.is_float() {
                    if let Cmp::Int(c) = cmp {
                        cmp = Cmp::Float(match c {
                            IntCmp::Eq => FloatCmp::Eq,
                            IntCmp::Ne => FloatCmp::Ne,
                            IntCmp::Lt => FloatCmp::Lt,
                            IntCmp::Le => FloatCmp::Le,
                            IntCmp::Gt => FloatCmp::Gt,
                            IntCmp::Ge => FloatCmp::Ge,
                        });
                    }
                    if !matches!(ty, Type::F32 | Type::F64 | Type::F16 | Type::Bf16) {
                        return Err(unsup(line, form));
                    }
                } else if matches!(cmp, Cmp::Float(_)) {
                    return Err(unsup(line, form));
                }
                let (d, d2) = match o(0)? {
                    Operand::PredPair(a, b) => (self.reg(a, line)?, Some(self.reg(b, line)?)),
                    other => (self.dst(other, line)?, None),
                };
                let a = s!(1, ty);
                let b = s!(2, ty);
                let combine = match combine_op {
                    Some(bop) => Some((bop, s!(3, Type::Pred))),
                    None => None,
                };
                (
                    Op::Setp {
                        cmp,
                        ty,
                        d,
                        d2,
                        a,
                        b,
                        combine,
                    },
                    class_for(ty),
                )
            }
            "selp" => {
                m.only(&[])?;
                let ty = m.ty()?;
                (
                    Op::Selp {
                        d: d!(0),
                        a: s!(1, ty),
                        b: s!(2, ty),
                        p: s!(3, Type::Pred),
                        bits: ty.bits().min(64),
                    },
                    Class::Integer,
                )
            }
            "cvt" => {
                m.only(&[
                    "rn",
                    "rz",
                    "rm",
                    "rp",
                    "rni",
                    "rzi",
                    "rmi",
                    "rpi",
                    "sat",
                    "ftz",
                    "relu",
                    "satfinite",
                ])?;
                let tys = m.types();
                if tys.len() != 2 {
                    return Err(unsup(line, format!("{form}: expected two types")));
                }
                let (dty, sty) = (tys[0], tys[1]);
                if matches!(dty, Type::Bf16x2 | Type::F16x2) {
                    if sty != Type::F32 || m.frnd() != Some(FloatRound::Rn) {
                        return Err(unsup(line, form));
                    }
                    return Ok((
                        Op::CvtPack {
                            d: d!(0),
                            hi: s!(1, Type::F32),
                            lo: s!(2, Type::F32),
                            bf16: dty == Type::Bf16x2,
                            relu: m.has("relu"),
                        },
                        Class::Conversion,
                    ));
                }
                let ok = |t: Type| {
                    !matches!(
                        t,
                        Type::Pred | Type::B128 | Type::F16x2 | Type::Bf16x2 | Type::Tf32
                    )
                };
                if !ok(dty) || !ok(sty) {
                    return Err(unsup(line, form));
                }
                (
                    Op::Cvt {
                        d: d!(0),
                        a: s!(1, sty),
                        dty,
                        sty,
                        frnd: m.frnd(),
                        irnd: m.irnd(),
                        sat: m.has("sat"),
                        ftz: m.has("ftz"),
                        relu: m.has("relu"),
                    },
                    Class::Conversion,
                )
            }
            "cvta" => {
                m.only(&["to", "global", "shared", "local", "const", "param"])?;
                let ty = m.ty()?;
                (
                    Op::Cvta {
                        d: d!(0),
                        a: s!(1, ty),
                        to_space: m.has("to"),
                        space: m.space(),
                        bits: ty.bits(),
                    },
                    Class::Integer,
                )
            }
            "ld" | "st" => {
                m.only(&[
                    "global",
                    "shared",
                    "local",
                    "param",
                    "const",
                    "nc",
                    "v2",
                    "v4",
                    "v8",
                    "ca",
                    "cg",
                    "cs",
                    "lu",
                    "cv",
                    "wb",
                    "wt",
                    "volatile",
                    "relaxed",
                    "acquire",
                    "release",
                    "gpu",
                    "sys",
                    "cta",
                    "weak",
                    "L1::no_allocate",
                    "L1::evict_last",
                    "L1::evict_first",
                    "L2::64B",
                    "L2::128B",
                    "L2::256B",
                    "L2::evict_first",
                    "L2::evict_last",
                    "L2::cache_hint",
                ])?;
                let ty = m.ty()?;
                let space = m.space();
                let vec = m.vector();
                let class = match space {
                    Space::Global | Space::Generic => Class::GlobalMemory,
                    Space::Shared => Class::SharedMemory,
                    _ => Class::OtherMemory,
                };
                if op == "ld" {
                    let ds = match o(0)? {
                        Operand::Vector(items) => items
                            .iter()
                            .map(|p| self.opt_dst(p, line))
                            .collect::<Result<Vec<_>>>()?,
                        other => vec![Some(self.dst(other, line)?)],
                    };
                    if ds.len() as u32 != vec {
                        return Err(EmuError::parse(
                            line,
                            format!("{form}: {} destinations", ds.len()),
                        ));
                    }
                    let addr = self.addr(o(1)?, line)?;
                    (
                        Op::Ld {
                            space,
                            ty,
                            ds,
                            addr,
                            sem: m.sem(),
                        },
                        class,
                    )
                } else {
                    let addr = self.addr(o(0)?, line)?;
                    let srcs = match o(1)? {
                        Operand::Vector(items) => items
                            .iter()
                            .map(|p| self.src(p, ty, line))
                            .collect::<Result<Vec<_>>>()?,
                        other => vec![self.src(other, ty, line)?],
                    };
                    if srcs.len() as u32 != vec {
                        return Err(EmuError::parse(
                            line,
                            format!("{form}: {} sources", srcs.len()),
                        ));
                    }
                    (
                        Op::St {
                            space,
                            ty,
                            srcs,
                            addr,
                            sem: m.sem(),
                        },
                        class,
                    )
                }
            }
            "atom" | "red" => {
                m.only(&[
                    "global", "shared", "add", "min", "max", "and", "or", "xor", "exch", "cas",
                    "inc", "dec", "relaxed", "acquire", "release", "acq_rel", "gpu", "sys", "cta",
                ])?;
                let ty = m.ty()?;
                let aop = if m.has("add") {
                    AtomOp::Add
                } else if m.has("min") {
                    AtomOp::Min
                } else if m.has("max") {
                    AtomOp::Max
                } else if m.has("and") {
                    AtomOp::And
                } else if m.has("or") {
                    AtomOp::Or
                } else if m.has("xor") {
                    AtomOp::Xor
                } else if m.has("exch") {
                    AtomOp::Exch
                } else if m.has("cas") {
                    AtomOp::Cas
                } else if m.has("inc") {
                    AtomOp::Inc
                } else if m.has("dec") {
                    AtomOp::Dec
                } else {
                    return Err(unsup(line, form));
                };
                if ty.is_float() && !matches!((aop, ty), (AtomOp::Add, Type::F32 | Type::F64)) {
                    return Err(unsup(line, form));
                }
                let space = m.space();
                let class = if space == Space::Shared {
                    Class::SharedMemory
                } else {
                    Class::GlobalMemory
                };
                let (d, k) = if op == "atom" {
                    (Some(d!(0)), 1)
                } else {
                    (None, 0)
                };
                let addr = self.addr(o(k)?, line)?;
                let b = s!(k + 1, ty);
                let c = if aop == AtomOp::Cas {
                    s!(k + 2, ty)
                } else {
                    none
                };
                (
                    Op::Atom {
                        space,
                        op: aop,
                        ty,
                        d,
                        addr,
                        b,
                        c,
                        sem: m.sem(),
                    },
                    class,
                )
            }
            "bra" => {
                m.only(&["uni"])?;
                let target = match o(0)? {
                    Operand::Name(n) => *self
                        .labels
                        .get(n)
                        .ok_or_else(|| EmuError::parse(line, format!("unknown label {n}")))?,
                    other => return Err(unsup(line, format!("bra to {other:?}"))),
                };
                (Op::Bra { target }, Class::Control)
            }
            "ret" | "exit" => {
                m.only(&["uni"])?;
                (Op::Exit, Class::Control)
            }
            "bar" | "barrier" => {
                m.only(&["sync", "arrive", "aligned", "cta", "warp"])?;
                if m.has("warp") {
                    return Ok((
                        Op::WarpSync {
                            mask: s!(0, Type::B32),
                        },
                        Class::Sync,
                    ));
                }
                let arrive = m.has("arrive");
                if !arrive && !m.has("sync") && !ins.modifiers.is_empty() && !m.has("aligned") {
                    return Err(unsup(line, form));
                }
                let id = if ops.is_empty() {
                    Src::Imm(0)
                } else {
                    s!(0, Type::B32)
                };
                let count = if ops.len() > 1 {
                    Some(s!(1, Type::B32))
                } else {
                    None
                };
                (Op::Bar { id, count, arrive }, Class::Sync)
            }
            "membar" | "fence" => (Op::Fence, Class::Sync),
            "shfl" => {
                m.only(&["sync", "up", "down", "bfly", "idx"])?;
                let mode = if m.has("up") {
                    ShflMode::Up
                } else if m.has("down") {
                    ShflMode::Down
                } else if m.has("bfly") {
                    ShflMode::Bfly
                } else if m.has("idx") {
                    ShflMode::Idx
                } else {
                    return Err(unsup(line, form));
                };
                if !m.has("sync") {
                    return Err(unsup(
                        line,
                        format!("{form} (only shfl.sync exists on sm_70+)"),
                    ));
                }
                let (d, dp) = match o(0)? {
                    Operand::PredPair(a, b) => (self.reg(a, line)?, Some(self.reg(b, line)?)),
                    other => (self.dst(other, line)?, None),
                };
                (
                    Op::Shfl {
                        mode,
                        d,
                        dp,
                        a: s!(1, Type::B32),
                        b: s!(2, Type::B32),
                        c: s!(3, Type::B32),
                        mask: s!(4, Type::B32),
                    },
                    Class::Sync,
                )
            }
            "vote" => {
                m.only(&["sync", "all", "any", "uni", "ballot"])?;
                let mode = if m.has("all") {
                    VoteMode::All
                } else if m.has("any") {
                    VoteMode::Any
                } else if m.has("uni") {
                    VoteMode::Uni
                } else if m.has("ballot") {
                    VoteMode::Ballot
                } else {
                    return Err(unsup(line, form));
                };
                (
                    Op::Vote {
                        mode,
                        d: d!(0),
                        a: s!(1, Type::Pred),
                        mask: s!(2, Type::B32),
                    },
                    Class::Sync,
                )
            }
            "redux" => {
                m.only(&["sync", "add", "min", "max", "and", "or", "xor"])?;
                let ty = m.ty()?;
                let rop = if m.has("add") {
                    IntOp::Add
                } else if m.has("min") {
                    IntOp::Min
                } else if m.has("max") {
                    IntOp::Max
                } else if m.has("and") {
                    IntOp::And
                } else if m.has("or") {
                    IntOp::Or
                } else if m.has("xor") {
                    IntOp::Xor
                } else {
                    return Err(unsup(line, form));
                };
                if !matches!(ty, Type::U32 | Type::S32 | Type::B32) {
                    return Err(unsup(line, form));
                }
                (
                    Op::Redux {
                        op: rop,
                        ty,
                        d: d!(0),
                        a: s!(1, ty),
                        mask: s!(2, Type::B32),
                    },
                    Class::Sync,
                )
            }
            "ldmatrix" => {
                m.only(&[
                    "sync", "aligned", "m8n8", "x1", "x2", "x4", "trans", "shared", "b16",
                ])?;
                let num = if m.has("x4") {
                    4
                } else if m.has("x2") {
                    2
                } else if m.has("x1") {
                    1
                } else {
                    return Err(unsup(line, form));
                };
                let ds = match o(0)? {
                    Operand::Vector(items) => items
                        .iter()
                        .map(|p| self.dst(p, line))
                        .collect::<Result<Vec<_>>>()?,
                    other => vec![self.dst(other, line)?],
                };
                if ds.len() != num as usize {
                    return Err(EmuError::parse(
                        line,
                        format!("{form}: {} destinations", ds.len()),
                    ));
                }
                let addr = self.addr(o(1)?, line)?;
                (
                    Op::Ldmatrix {
                        num,
                        trans: m.has("trans"),
                        ds,
                        addr,
                    },
                    Class::SharedMemory,
                )
            }
            "mma" => {
                m.only(&["sync", "aligned", "m16n8k16", "m16n8k8", "row", "col"])?;
                let k = if m.has("m16n8k16") {
                    16
                } else if m.has("m16n8k8") {
                    8
                } else {
                    return Err(unsup(line, form));
                };
                let tys = m.types();
                let bf16 = match tys.as_slice() {
                    [Type::F32, Type::Bf16, Type::Bf16, Type::F32] => true,
                    [Type::F32, Type::F16, Type::F16, Type::F32] => false,
                    _ => return Err(unsup(line, form)),
                };
                if !(m.has("row") && m.has("col")) {
                    return Err(unsup(line, form));
                }
                let regs = |this: &mut Self, i: usize, ty: Type| -> Result<Vec<Src>> {
                    match self_operand(ops, i, line, &form)? {
                        Operand::Vector(items) => {
                            items.iter().map(|p| this.src(p, ty, line)).collect()
                        }
                        other => Ok(vec![this.src(other, ty, line)?]),
                    }
                };
                let dv = match o(0)? {
                    Operand::Vector(items) if items.len() == 4 => items
                        .iter()
                        .map(|p| self.dst(p, line))
                        .collect::<Result<Vec<_>>>()?,
                    _ => {
                        return Err(EmuError::parse(
                            line,
                            format!("{form}: D must be 4 registers"),
                        ))
                    }
                };
                let a = regs(self, 1, Type::B32)?;
                let b = regs(self, 2, Type::B32)?;
                let cv = regs(self, 3, Type::F32)?;
                let (na, nb) = if k == 16 { (4, 2) } else { (2, 1) };
                if a.len() != na || b.len() != nb || cv.len() != 4 {
                    return Err(EmuError::parse(
                        line,
                        format!("{form}: wrong fragment register counts"),
                    ));
                }
                (
                    Op::Mma {
                        k,
                        bf16,
                        d: [dv[0], dv[1], dv[2], dv[3]],
                        a,
                        b,
                        c: [cv[0], cv[1], cv[2], cv[3]],
                    },
                    Class::Tensor,
                )
            }
            "cp" => {
                if m.has("commit_group") {
                    (Op::CpAsyncCommit, Class::Sync)
                } else if m.has("wait_group") {
                    let n = match o(0)? {
                        Operand::Int(v) => *v as u32,
                        other => return Err(unsup(line, format!("{form} {other:?}"))),
                    };
                    (
                        Op::CpAsyncWait {
                            n,
                            commit_first: false,
                        },
                        Class::Sync,
                    )
                } else if m.has("wait_all") {
                    (
                        Op::CpAsyncWait {
                            n: 0,
                            commit_first: true,
                        },
                        Class::Sync,
                    )
                } else if m.has("async") {
                    m.only(&[
                        "async", "ca", "cg", "shared", "global", "L2::128B", "L2::64B", "L2::256B",
                    ])?;
                    let dst = self.addr(o(0)?, line)?;
                    let src = self.addr(o(1)?, line)?;
                    let size = match o(2)? {
                        Operand::Int(v) if matches!(*v, 4 | 8 | 16) => *v as u32,
                        other => return Err(unsup(line, format!("{form} size {other:?}"))),
                    };
                    let src_size = if ops.len() > 3 {
                        Some(s!(3, Type::U32))
                    } else {
                        None
                    };
                    (
                        Op::CpAsync {
                            dst,
                            src,
                            size,
                            src_size,
                        },
                        Class::SharedMemory,
                    )
                } else {
                    return Err(unsup(line, form));
                }
            }
            "prmt" => {
                m.only(&[])?;
                (
                    Op::Prmt {
                        d: d!(0),
                        a: s!(1, Type::B32),
                        b: s!(2, Type::B32),
                        c: s!(3, Type::B32),
                    },
                    Class::Integer,
                )
            }
            "bfe" => {
                let ty = m.ty()?;
                (
                    Op::Bfe {
                        ty,
                        d: d!(0),
                        a: s!(1, ty),
                        b: s!(2, Type::U32),
                        c: s!(3, Type::U32),
                    },
                    Class::Integer,
                )
            }
            "bfi" => {
                let ty = m.ty()?;
                (
                    Op::Bfi {
                        ty,
                        d: d!(0),
                        f: s!(1, ty),
                        b: s!(2, ty),
                        pos: s!(3, Type::U32),
                        len: s!(4, Type::U32),
                    },
                    Class::Integer,
                )
            }
            "lop3" => {
                let lut = match o(4)? {
                    Operand::Int(v) => *v as u8,
                    other => return Err(unsup(line, format!("{form} lut {other:?}"))),
                };
                (
                    Op::Lop3 {
                        d: d!(0),
                        a: s!(1, Type::B32),
                        b: s!(2, Type::B32),
                        c: s!(3, Type::B32),
                        lut,
                    },
                    Class::Integer,
                )
            }
            "shf" => {
                m.only(&["l", "r", "wrap", "clamp"])?;
                (
                    Op::Shf {
                        left: m.has("l"),
                        clamp: m.has("clamp"),
                        d: d!(0),
                        a: s!(1, Type::B32),
                        b: s!(2, Type::B32),
                        c: s!(3, Type::U32),
                    },
                    Class::Integer,
                )
            }
            "trap" => (Op::Trap, Class::Control),
            "activemask" => (Op::ActiveMask { d: d!(0) }, Class::Sync),
            "nanosleep" | "pmevent" | "prefetch" | "prefetchu" => (Op::Nop, Class::Sync),
            _ => return Err(unsup(line, form)),
        })
    }
}

fn self_operand<'o>(ops: &'o [Operand], i: usize, line: u32, form: &str) -> Result<&'o Operand> {
    ops.get(i)
        .ok_or_else(|| EmuError::parse(line, format!("{form}: missing operand {}", i + 1)))
}

/// Lays out module-scope `.global` / `.const` variables.
pub(crate) fn module_globals(m: &ast::Module) -> Vec<GlobalVar> {
    m.globals
        .iter()
        .filter(|g| matches!(g.space, Space::Global | Space::Const))
        .map(|g| {
            let size = g.size_bytes();
            let elem = u64::from(g.ty.bytes());
            let mut init = vec![0u8; size as usize];
            for (i, w) in g.init.iter().enumerate() {
                let at = i as u64 * elem;
                for b in 0..elem {
                    if let Some(slot) = init.get_mut((at + b) as usize) {
                        *slot = (w >> (8 * b)) as u8;
                    }
                }
            }
            GlobalVar {
                name: g.name.clone(),
                size,
                align: g.alignment(),
                init,
            }
        })
        .collect()
}

/// Decodes one `.entry` into a [`Kernel`].
pub(crate) fn decode_kernel(
    module: &ast::Module,
    globals: &[GlobalVar],
    f: &ast::Function,
) -> Result<Kernel> {
    let body = f
        .body
        .as_ref()
        .ok_or_else(|| unsup(f.line, format!("{} has no body", f.name)))?;
    let mut dec = Decoder {
        scopes: vec![HashMap::new()],
        num_regs: 0,
        labels: HashMap::new(),
        symbols: Vec::new(),
        symbol_ids: HashMap::new(),
        forms: Vec::new(),
        form_ids: HashMap::new(),
        module,
        globals,
    };
    // Parameters.
    let mut param_bytes = 0u64;
    let mut params = Vec::new();
    for p in &f.params {
        let off = align_up(param_bytes, p.alignment());
        let size = p.size_bytes();
        dec.add_symbol(Symbol {
            name: p.name.clone(),
            space: Space::Param,
            offset: off,
            size,
        });
        params.push((p.name.clone(), off, size));
        param_bytes = off + size;
    }
    // Shared and local layout: module-scope shared first, then function-scope.
    let mut shared = 0u64;
    let mut extern_shared = Vec::new();
    let mut local = 0u64;
    let func_vars: Vec<&ast::VarDecl> = body
        .iter()
        .filter_map(|s| match s {
            Statement::Var(v) => Some(v),
            _ => None,
        })
        .collect();
    for v in dec.module.globals.iter().chain(func_vars.iter().copied()) {
        match v.space {
            Space::Shared if v.is_extern || v.array == Some(0) => extern_shared.push(v.clone()),
            Space::Shared => {
                let off = align_up(shared, v.alignment());
                dec.add_symbol(Symbol {
                    name: v.name.clone(),
                    space: Space::Shared,
                    offset: off,
                    size: v.size_bytes(),
                });
                shared = off + v.size_bytes();
            }
            Space::Local => {
                let off = align_up(local, v.alignment());
                dec.add_symbol(Symbol {
                    name: v.name.clone(),
                    space: Space::Local,
                    offset: off,
                    size: v.size_bytes(),
                });
                local = off + v.size_bytes();
            }
            Space::Global | Space::Const => {
                if let Some(i) = dec.globals.iter().position(|g| g.name == v.name) {
                    dec.add_symbol(Symbol {
                        name: v.name.clone(),
                        space: v.space,
                        offset: i as u64,
                        size: v.size_bytes(),
                    });
                } else {
                    return Err(unsup(v.line, format!("function-scope .global {}", v.name)));
                }
            }
            _ => {}
        }
    }
    let dynamic_shared_offset = align_up(shared, 16);
    for v in &extern_shared {
        dec.add_symbol(Symbol {
            name: v.name.clone(),
            space: Space::Shared,
            offset: dynamic_shared_offset,
            size: 0,
        });
    }
    // First pass: labels -> instruction index.
    let mut n = 0u32;
    for s in body {
        match s {
            Statement::Label(l, _) if !l.is_empty() => {
                dec.labels.insert(l.clone(), n);
            }
            Statement::Instr(_) => n += 1,
            _ => {}
        }
    }
    // Second pass: registers (scoped) and instructions.
    let mut insts = Vec::with_capacity(n as usize);
    for s in body {
        match s {
            Statement::Reg { ty, names, .. } => {
                for name in names {
                    let r = dec.num_regs;
                    dec.num_regs += 1;
                    dec.scopes
                        .last_mut()
                        .expect("scope")
                        .insert(name.clone(), (r, *ty));
                }
            }
            Statement::Open(_) => dec.scopes.push(HashMap::new()),
            Statement::Close(line) => {
                if dec.scopes.len() <= 1 {
                    return Err(EmuError::parse(*line, "unbalanced '}'"));
                }
                dec.scopes.pop();
            }
            Statement::Instr(ins) => {
                let (op, class) = dec.inst(ins)?;
                let guard = match &ins.guard {
                    Some((p, neg)) => Some((dec.reg(p, ins.line)?, *neg)),
                    None => None,
                };
                let form = dec.form_id(&ins.full_opcode());
                insts.push(Inst {
                    op,
                    guard,
                    line: ins.line,
                    form,
                    class,
                });
            }
            Statement::Label(..) | Statement::Var(_) => {}
        }
    }
    // A kernel that falls off its end exits.
    insts.push(Inst {
        op: Op::Exit,
        guard: None,
        line: f.line,
        form: dec.form_id("ret"),
        class: Class::Control,
    });
    Ok(Kernel {
        name: f.name.clone(),
        insts,
        num_regs: dec.num_regs,
        param_bytes,
        params,
        static_shared: shared,
        dynamic_shared_offset,
        local_bytes: local,
        symbols: dec.symbols,
        maxntid: f.maxntid,
        reqntid: f.reqntid,
        forms: dec.forms,
    })
}
