//! Errors: every one names where it happened (line, kernel, CTA, thread, instruction, address).

use std::fmt;

/// Where in a launch something happened: kernel, CTA, thread and the instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Kernel name.
    pub kernel: String,
    /// CTA index (x, y, z).
    pub cta: [u32; 3],
    /// Thread index in the CTA (x, y, z).
    pub thread: [u32; 3],
    /// PTX source line of the instruction.
    pub line: u32,
    /// The instruction's opcode with modifiers (`st.global.f32`).
    pub instruction: String,
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel {} block ({},{},{}) thread ({},{},{}) at line {} `{}`",
            self.kernel,
            self.cta[0],
            self.cta[1],
            self.cta[2],
            self.thread[0],
            self.thread[1],
            self.thread[2],
            self.line,
            self.instruction
        )
    }
}

/// What the emulator reports.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EmuError {
    /// The PTX text could not be parsed.
    #[error("PTX parse error at line {line}: {message}")]
    Parse {
        /// 1-based source line.
        line: u32,
        /// What was wrong.
        message: String,
    },
    /// A construct the emulator does not implement (opcode form, directive, operand shape).
    #[error("unsupported at line {line}: {what}")]
    Unsupported {
        /// 1-based source line.
        line: u32,
        /// The opcode form or construct.
        what: String,
    },
    /// A kernel or symbol name that the module does not define.
    #[error("no {kind} named {name:?} in the module")]
    UnknownName {
        /// `kernel`, `symbol`, ...
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// Bad launch configuration or arguments.
    #[error("bad launch of {kernel}: {why}")]
    BadLaunch {
        /// Kernel name.
        kernel: String,
        /// What was wrong.
        why: String,
    },
    /// An access outside every allocation, or past the end of the one it started in.
    #[error("out-of-bounds {access} of {size} bytes at {address:#x} in {space} memory: {site}; {nearest}")]
    OutOfBounds {
        /// `read` / `write`.
        access: &'static str,
        /// Access size in bytes.
        size: u32,
        /// The address.
        address: u64,
        /// `global`, `shared`, `local`, `param`.
        space: &'static str,
        /// Where.
        site: Box<Site>,
        /// The allocation the access missed (nearest one), described.
        nearest: String,
    },
    /// An access whose address is not a multiple of its size.
    #[error("misaligned {access} of {size} bytes at {address:#x} in {space} memory: {site}")]
    Misaligned {
        /// `read` / `write`.
        access: &'static str,
        /// Access size in bytes.
        size: u32,
        /// The address.
        address: u64,
        /// The state space.
        space: &'static str,
        /// Where.
        site: Box<Site>,
    },
    /// A read of memory that was never written (or was poisoned, or is the target of a
    /// `cp.async` not yet waited for).
    #[error("read of {state} memory ({size} bytes at {address:#x}, {space}): {site}")]
    UninitializedRead {
        /// `uninitialised`, `poisoned` or `pending cp.async`.
        state: &'static str,
        /// Access size.
        size: u32,
        /// The address.
        address: u64,
        /// The state space.
        space: &'static str,
        /// Where.
        site: Box<Site>,
    },
    /// Two threads of one CTA touched the same shared-memory bytes between two barriers, at
    /// least one of them writing.
    #[error("shared-memory race at offset {offset:#x}: {first} {first_access} vs {second} {second_access} with no barrier between")]
    SharedRace {
        /// Byte offset in the CTA's shared memory.
        offset: u64,
        /// The earlier access's site.
        first: Box<Site>,
        /// `read` / `write`.
        first_access: &'static str,
        /// The later access's site.
        second: Box<Site>,
        /// `read` / `write`.
        second_access: &'static str,
    },
    /// Threads blocked forever: a barrier some threads never reach, or a warp-collective whose
    /// members never arrive.
    #[error("deadlock in kernel {kernel} block ({},{},{}): {detail}", cta[0], cta[1], cta[2])]
    Deadlock {
        /// Kernel name.
        kernel: String,
        /// The CTA.
        cta: [u32; 3],
        /// Which threads wait where.
        detail: String,
    },
    /// Threads of one CTA waiting at the same barrier from different instructions, or a warp
    /// collective reached with a member mask that does not match.
    #[error("divergent synchronisation: {detail}")]
    Divergence {
        /// What diverged.
        detail: String,
    },
    /// The launch ran more instructions than its limit (a spin loop that never ends).
    #[error("kernel {kernel} exceeded its limit of {limit} executed instructions (a spin-wait that never ends?)")]
    InstructionLimit {
        /// Kernel name.
        kernel: String,
        /// The limit.
        limit: u64,
    },
    /// An instruction that traps (`trap`, division by zero is not one) or an invalid operand at
    /// run time.
    #[error("fault: {why}: {site}")]
    Fault {
        /// What happened.
        why: String,
        /// Where.
        site: Box<Site>,
    },
    /// Host-side memory API misuse (free of an unknown address, copy out of range).
    #[error("memory API: {0}")]
    Memory(String),
}

impl EmuError {
    pub(crate) fn parse(line: u32, message: impl Into<String>) -> Self {
        EmuError::Parse {
            line,
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(line: u32, what: impl Into<String>) -> Self {
        EmuError::Unsupported {
            line,
            what: what.into(),
        }
    }
}

/// Result alias.
pub type Result<T, E = EmuError> = std::result::Result<T, E>;
