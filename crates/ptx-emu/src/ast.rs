//! The syntax tree of a PTX module, as written: what [`crate::parse`] produces and
//! [`crate::program`] lowers to the compact form the interpreter runs.
//!
//! Names follow the PTX ISA ("Chapter 4 Syntax", "Chapter 5 State Spaces, Types, and
//! Variables", "Chapter 11 Directives"). Opcodes keep their dotted modifiers split off
//! (`ld.global.nc.v2.u16` is opcode `ld` with modifiers `global`, `nc`, `v2`, `u16`).

/// A whole `.ptx` file.
#[derive(Clone, Debug, Default)]
pub struct Module {
    /// `.version major.minor`.
    pub version: (u32, u32),
    /// `.target` entries, e.g. `["sm_80"]`.
    pub target: Vec<String>,
    /// `.address_size` (64 for everything nvcc emits here).
    pub address_size: u32,
    /// Module-scope variables (`.global`, `.shared`, `.const`).
    pub globals: Vec<VarDecl>,
    /// Kernels (`.entry`) and device functions (`.func`), in file order.
    pub functions: Vec<Function>,
}

/// A `.entry` or `.func`.
#[derive(Clone, Debug)]
pub struct Function {
    /// The symbol name.
    pub name: String,
    /// `.entry` (a kernel) rather than `.func`.
    pub is_entry: bool,
    /// Parameters in declaration order.
    pub params: Vec<VarDecl>,
    /// Return parameters of a `.func` (`.func (.param .b32 r) f(...)`).
    pub returns: Vec<VarDecl>,
    /// `.maxntid x, y, z` when given.
    pub maxntid: Option<[u32; 3]>,
    /// `.reqntid x, y, z` when given.
    pub reqntid: Option<[u32; 3]>,
    /// The body; `None` for a prototype (declaration without body).
    pub body: Option<Vec<Statement>>,
    /// Line of the `.entry` / `.func` keyword.
    pub line: u32,
}

/// A variable or parameter declaration.
#[derive(Clone, Debug, PartialEq)]
pub struct VarDecl {
    /// State space (`.param`, `.shared`, `.global`, `.local`, `.const`, `.reg`).
    pub space: Space,
    /// Element type.
    pub ty: Type,
    /// `.align N` when given.
    pub align: Option<u32>,
    /// `.vN` vector width, 1 when scalar.
    pub vector: u32,
    /// The name.
    pub name: String,
    /// Array length (`name[40]`); `None` for a scalar, `Some(0)` for `name[]` (extern shared).
    pub array: Option<u64>,
    /// `.extern` (dynamic shared memory).
    pub is_extern: bool,
    /// Initializer words (`= {1, 2}` or `= 5`), as raw bits of `ty`.
    pub init: Vec<u64>,
    /// Source line.
    pub line: u32,
}

impl VarDecl {
    /// Size in bytes (element size × vector width × array length; 0 for an unsized extern array).
    pub fn size_bytes(&self) -> u64 {
        let elem = u64::from(self.ty.bytes()) * u64::from(self.vector);
        elem * self.array.unwrap_or(1)
    }

    /// Alignment in bytes (the `.align` given, otherwise the element size).
    pub fn alignment(&self) -> u64 {
        u64::from(self.align.unwrap_or(self.ty.bytes() * self.vector).max(1))
    }
}

/// PTX state spaces (PTX ISA 5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    /// Registers.
    Reg,
    /// Special registers (`%tid` ...).
    Sreg,
    /// Kernel / function parameters.
    Param,
    /// Global memory.
    Global,
    /// CTA-shared memory.
    Shared,
    /// Per-thread local memory.
    Local,
    /// Constant memory.
    Const,
    /// The generic address space (no space modifier on a load or store).
    Generic,
}

/// Fundamental types (PTX ISA 5.2.2), plus `.pred`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    /// `.b8`
    B8,
    /// `.b16`
    B16,
    /// `.b32`
    B32,
    /// `.b64`
    B64,
    /// `.b128`
    B128,
    /// `.u8`
    U8,
    /// `.u16`
    U16,
    /// `.u32`
    U32,
    /// `.u64`
    U64,
    /// `.s8`
    S8,
    /// `.s16`
    S16,
    /// `.s32`
    S32,
    /// `.s64`
    S64,
    /// `.f16`
    F16,
    /// `.f16x2`
    F16x2,
    /// `.bf16`
    Bf16,
    /// `.bf16x2`
    Bf16x2,
    /// `.tf32`
    Tf32,
    /// `.f32`
    F32,
    /// `.f64`
    F64,
    /// `.pred`
    Pred,
}

impl Type {
    /// The type named by a modifier without its dot (`"u32"`), if it is one.
    pub fn from_name(s: &str) -> Option<Type> {
        Some(match s {
            "b8" => Type::B8,
            "b16" => Type::B16,
            "b32" => Type::B32,
            "b64" => Type::B64,
            "b128" => Type::B128,
            "u8" => Type::U8,
            "u16" => Type::U16,
            "u32" => Type::U32,
            "u64" => Type::U64,
            "s8" => Type::S8,
            "s16" => Type::S16,
            "s32" => Type::S32,
            "s64" => Type::S64,
            "f16" => Type::F16,
            "f16x2" => Type::F16x2,
            "bf16" => Type::Bf16,
            "bf16x2" => Type::Bf16x2,
            "tf32" => Type::Tf32,
            "f32" => Type::F32,
            "f64" => Type::F64,
            "pred" => Type::Pred,
            _ => return None,
        })
    }

    /// Width in bits (`.pred` counts as 1).
    pub fn bits(self) -> u32 {
        match self {
            Type::Pred => 1,
            Type::B8 | Type::U8 | Type::S8 => 8,
            Type::B16 | Type::U16 | Type::S16 | Type::F16 | Type::Bf16 => 16,
            Type::B32
            | Type::U32
            | Type::S32
            | Type::F32
            | Type::F16x2
            | Type::Bf16x2
            | Type::Tf32 => 32,
            Type::B64 | Type::U64 | Type::S64 | Type::F64 => 64,
            Type::B128 => 128,
        }
    }

    /// Width in bytes (`.pred` counts as 1).
    pub fn bytes(self) -> u32 {
        self.bits().div_ceil(8)
    }

    /// Signed integer type.
    pub fn is_signed(self) -> bool {
        matches!(self, Type::S8 | Type::S16 | Type::S32 | Type::S64)
    }

    /// A scalar floating-point type (f16, bf16, tf32, f32, f64).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            Type::F16 | Type::Bf16 | Type::Tf32 | Type::F32 | Type::F64
        )
    }
}

/// One statement of a function body.
#[derive(Clone, Debug)]
pub enum Statement {
    /// `name:`
    Label(String, u32),
    /// An instruction.
    Instr(Instruction),
    /// `.reg .ty %name<N>;` or `.reg .ty a, b;`: the register names declared.
    Reg {
        /// Register type.
        ty: Type,
        /// Vector width (`.v2` registers are rare; 1 normally).
        vector: u32,
        /// The declared names (ranges expanded).
        names: Vec<String>,
        /// Source line.
        line: u32,
    },
    /// A `.shared` / `.local` / `.const` / `.global` variable inside a function.
    Var(VarDecl),
    /// `{`: opens a scope (inline-asm blocks).
    Open(u32),
    /// `}`: closes it.
    Close(u32),
}

/// An instruction as written.
#[derive(Clone, Debug, PartialEq)]
pub struct Instruction {
    /// `@%p1` / `@!%p1`: the guard predicate and whether it is negated.
    pub guard: Option<(String, bool)>,
    /// The opcode without modifiers (`ld`).
    pub opcode: String,
    /// The modifiers without dots, in order (`["global", "nc", "v2", "u16"]`).
    pub modifiers: Vec<String>,
    /// Operands in order (destination first).
    pub operands: Vec<Operand>,
    /// Source line.
    pub line: u32,
}

impl Instruction {
    /// The opcode with its modifiers, as written (`ld.global.nc.v2.u16`).
    pub fn full_opcode(&self) -> String {
        let mut s = self.opcode.clone();
        for m in &self.modifiers {
            s.push('.');
            s.push_str(m);
        }
        s
    }
}

/// An operand as written.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A register, special register or symbol name (`%r1`, `%tid.x`, `smem`, `$L__BB0_1`).
    Name(String),
    /// An integer literal (two's complement bits).
    Int(i128),
    /// A float literal given as bits: `0fXXXXXXXX` (f32) or `0dXXXXXXXXXXXXXXXX` (f64), or a
    /// decimal float literal (stored as f64 bits with `is_f32 = false`).
    Float {
        /// The literal's bits.
        bits: u64,
        /// Written as `0f...` (32-bit).
        is_f32: bool,
    },
    /// `[base+offset]` / `[base]` / `[imm]`.
    Address {
        /// The register or symbol (`None` for an absolute address).
        base: Option<String>,
        /// The constant offset.
        offset: i64,
    },
    /// `{a, b, ...}`.
    Vector(Vec<Operand>),
    /// `_` (the sink / don't-care operand).
    Sink,
    /// `a|b` (setp's second destination).
    PredPair(String, String),
    /// A parenthesised list (call arguments) .
    List(Vec<Operand>),
}
