//! The interpreter: a grid of CTAs, each of warps of 32 threads, every thread with its own
//! program counter and registers (PTX ISA 3 "Programming Model": independent thread scheduling).
//!
//! Scheduling: the CTAs of a launch run in waves of [`LaunchConfig::resident_ctas`]; inside a
//! wave a seeded RNG picks a ready thread and runs it for a random number of instructions
//! (1..=[`LaunchConfig::max_quantum`]) or until it blocks. `bar.sync` blocks until every live
//! thread of the CTA (or the given count) has arrived; warp-collective instructions
//! (`shfl.sync`, `vote.sync`, `redux.sync`, `bar.warp.sync`, `ldmatrix`, `mma`) block until every
//! lane of their member mask waits at the same instruction, then execute for all of them at once.
//! When nothing is ready and something still waits, the launch fails with
//! [`EmuError::Deadlock`] naming the kernel, the CTA and who waits where.
//!
//! Memory is sequentially consistent (every access is immediately visible), which is stronger
//! than the PTX memory model, so flag protocols that are correct under the model also work here;
//! acquire/release/fence are counted but need no extra effect.
//!
//! Checks (each can be switched off in [`Checks`]): global and shared bounds (naming the
//! allocation missed), alignment, reads of uninitialised / poisoned / pending-`cp.async`
//! memory, and shared-memory races between two CTA barriers (accesses by different warps, at
//! least one a write; races inside one warp are not reported).

use crate::ast::{Space, Type};
use crate::error::{EmuError, Result, Site};
use crate::fragments::{self, MmaInput};
use crate::memory::{self, View, INIT, LOCAL_GENERIC_BASE, PENDING, SHARED_GENERIC_BASE, WINDOW};
use crate::metrics::Metrics;
use crate::numerics::{self as nx, DivMode, FloatRound};
use crate::program::{
    Addr, AtomOp, Base, BoolOp, Class, Cmp, FloatOp, Inst, IntCmp, IntOp, Kernel, Op, ShflMode,
    Src, Sreg, VoteMode,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, VecDeque};

/// Which sanitizer checks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checks {
    /// Reads of uninitialised or poisoned global/shared memory are errors (like
    /// `compute-sanitizer --tool initcheck`).
    pub initcheck: bool,
    /// Shared-memory races between barriers are errors (like `--tool racecheck`).
    pub racecheck: bool,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            initcheck: true,
            racecheck: true,
        }
    }
}

/// How to run a launch.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchConfig {
    /// CTAs per grid dimension.
    pub grid: [u32; 3],
    /// Threads per CTA dimension.
    pub block: [u32; 3],
    /// Dynamic shared memory bytes (`.extern .shared`).
    pub dynamic_shared: u32,
    /// Seed of the thread interleaving.
    pub seed: u64,
    /// CTAs that run concurrently (a wave); CTAs of one wave may wait on each other's flags.
    pub resident_ctas: u32,
    /// Longest run of one thread before the scheduler switches.
    pub max_quantum: u32,
    /// Fail with [`EmuError::InstructionLimit`] after this many thread instructions.
    pub max_instructions: u64,
    /// Sanitizer checks.
    pub checks: Checks,
}

impl LaunchConfig {
    /// A 1-D launch with default options.
    pub fn linear(blocks: u32, threads: u32) -> LaunchConfig {
        LaunchConfig {
            grid: [blocks, 1, 1],
            block: [threads, 1, 1],
            ..LaunchConfig::default()
        }
    }
}

impl Default for LaunchConfig {
    fn default() -> Self {
        LaunchConfig {
            grid: [1, 1, 1],
            block: [32, 1, 1],
            dynamic_shared: 0,
            seed: 0,
            resident_ctas: 4,
            max_quantum: 16,
            max_instructions: 1 << 36,
            checks: Checks::default(),
        }
    }
}

const NO_THREAD: u32 = u32::MAX;

#[derive(Clone, Copy, Default)]
struct RaceCell {
    w_thread: u32,
    w_epoch: u32,
    w_pc: u32,
    r_thread: u32,
    r_epoch: u32,
    r_pc: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TState {
    Ready,
    Barrier(u32),
    Collective,
    Exited,
}

struct PendingCopy {
    dst: u64,
    data: Vec<u8>,
    pc: u32,
}

struct Thread {
    pc: u32,
    state: TState,
    tid: [u32; 3],
    linear: u32,
    icount: u64,
    local: Vec<u8>,
    cp_open: Vec<PendingCopy>,
    cp_groups: VecDeque<Vec<PendingCopy>>,
}

#[derive(Default)]
struct BarState {
    arrived: u32,
    waiting: Vec<u32>,
    expected: Option<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum ReqKind {
    GlobalLoad,
    GlobalStore,
    Shared,
    /// One 8x8 matrix of an `ldmatrix` (each is its own shared-memory request, as on hardware).
    SharedPhase(u8),
}

#[derive(Default)]
struct Req {
    /// Global: sector numbers; shared: (bank, word) pairs.
    items: Vec<u64>,
}

struct Cta {
    index: [u32; 3],
    threads: Vec<Thread>,
    regs: Vec<u64>,
    shared: Vec<u8>,
    shadow: Vec<u8>,
    race: Vec<RaceCell>,
    epoch: u32,
    barriers: HashMap<u32, BarState>,
    live: u32,
    /// Per thread, per instruction: executions (for request grouping and warp counts).
    exec: Vec<u32>,
    reqs: HashMap<(ReqKind, u32, u32, u32), Req>,
}

/// What one step did.
enum Flow {
    Next,
    Blocked,
    Exited,
}

/// Everything one launch needs.
pub(crate) struct Launch<'a> {
    pub kernel: &'a Kernel,
    pub view: View,
    pub params: &'a [u8],
    pub globals: &'a [u64],
    pub cfg: &'a LaunchConfig,
    metrics: Metrics,
    /// Every global sector loaded / stored by the launch (for the compulsory traffic).
    load_sectors_seen: std::collections::HashSet<u64>,
    store_sectors_seen: std::collections::HashSet<u64>,
    class_counts: [u64; 12],
    /// Set while an `ldmatrix` reads matrix `i` (its rows form one request).
    phase: Option<u8>,
    executed: u64,
    nthreads: u32,
    ninst: usize,
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

fn sext(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        let s = 64 - bits;
        ((v << s) as i64) >> s
    }
}

fn f32b(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

fn b32f(x: f32) -> u64 {
    u64::from(x.to_bits())
}

fn f64b(v: u64) -> f64 {
    f64::from_bits(v)
}

fn space_name(s: Space) -> &'static str {
    match s {
        Space::Global => "global",
        Space::Shared => "shared",
        Space::Local => "local",
        Space::Param => "param",
        Space::Const => "const",
        Space::Generic => "generic",
        Space::Reg | Space::Sreg => "register",
    }
}

impl<'a> Launch<'a> {
    pub(crate) fn new(
        kernel: &'a Kernel,
        view: View,
        params: &'a [u8],
        globals: &'a [u64],
        cfg: &'a LaunchConfig,
    ) -> Result<Launch<'a>> {
        let bad = |why: String| EmuError::BadLaunch {
            kernel: kernel.name.clone(),
            why,
        };
        let nthreads = cfg.block.iter().map(|&b| u64::from(b)).product::<u64>();
        if nthreads == 0 || nthreads > 1024 {
            return Err(bad(format!(
                "block {:?} has {nthreads} threads (1..=1024 allowed)",
                cfg.block
            )));
        }
        if cfg.grid.contains(&0) {
            return Err(bad(format!("grid {:?} has a zero dimension", cfg.grid)));
        }
        if let Some(r) = kernel.reqntid {
            if r != cfg.block {
                return Err(bad(format!("block {:?} but .reqntid is {r:?}", cfg.block)));
            }
        }
        if let Some(mx) = kernel.maxntid {
            let cap: u64 = mx.iter().map(|&b| u64::from(b)).product();
            if nthreads > cap {
                return Err(bad(format!(
                    "block {:?} exceeds .maxntid {mx:?}",
                    cfg.block
                )));
            }
        }
        if (params.len() as u64) < kernel.param_bytes {
            return Err(bad(format!(
                "{} parameter bytes given, the kernel takes {}",
                params.len(),
                kernel.param_bytes
            )));
        }
        let smem = kernel.dynamic_shared_offset + u64::from(cfg.dynamic_shared);
        if smem > 227 * 1024 {
            return Err(bad(format!("{smem} bytes of shared memory (227 KiB max)")));
        }
        Ok(Launch {
            kernel,
            view,
            params,
            globals,
            cfg,
            metrics: Metrics::default(),
            load_sectors_seen: std::collections::HashSet::new(),
            store_sectors_seen: std::collections::HashSet::new(),
            class_counts: [0; 12],
            phase: None,
            executed: 0,
            nthreads: nthreads as u32,
            ninst: kernel.insts.len(),
        })
    }

    fn new_cta(&self, linear: u64) -> Cta {
        let g = self.cfg.grid;
        let index = [
            (linear % u64::from(g[0])) as u32,
            (linear / u64::from(g[0]) % u64::from(g[1])) as u32,
            (linear / (u64::from(g[0]) * u64::from(g[1]))) as u32,
        ];
        let b = self.cfg.block;
        let n = self.nthreads as usize;
        let threads = (0..self.nthreads)
            .map(|t| Thread {
                pc: 0,
                state: TState::Ready,
                tid: [t % b[0], t / b[0] % b[1], t / (b[0] * b[1])],
                linear: t,
                icount: 0,
                local: vec![0; self.kernel.local_bytes as usize],
                cp_open: Vec::new(),
                cp_groups: VecDeque::new(),
            })
            .collect();
        let smem =
            (self.kernel.dynamic_shared_offset + u64::from(self.cfg.dynamic_shared)) as usize;
        Cta {
            index,
            threads,
            regs: vec![0; n * self.kernel.num_regs as usize],
            shared: vec![0; smem],
            shadow: vec![memory::UNINIT; smem],
            race: if self.cfg.checks.racecheck {
                vec![
                    RaceCell {
                        w_thread: NO_THREAD,
                        r_thread: NO_THREAD,
                        ..RaceCell::default()
                    };
                    smem
                ]
            } else {
                Vec::new()
            },
            epoch: 1,
            barriers: HashMap::new(),
            live: self.nthreads,
            exec: vec![0; n * self.ninst],
            reqs: HashMap::new(),
        }
    }

    /// Runs the whole grid.
    pub(crate) fn run(mut self) -> Result<Metrics> {
        let total: u64 = self.cfg.grid.iter().map(|&g| u64::from(g)).product();
        let wave = u64::from(self.cfg.resident_ctas.max(1));
        let mut rng = StdRng::seed_from_u64(self.cfg.seed);
        let mut next = 0u64;
        while next < total {
            let count = wave.min(total - next);
            let mut ctas: Vec<Cta> = (next..next + count).map(|l| self.new_cta(l)).collect();
            next += count;
            self.run_wave(&mut ctas, &mut rng)?;
            for c in &mut ctas {
                self.finish_cta(c);
            }
        }
        for (i, &n) in self.class_counts.iter().enumerate() {
            if n > 0 {
                self.metrics.by_class.insert(Class::ALL[i], n);
            }
        }
        self.metrics.unique_load_sectors = self.load_sectors_seen.len() as u64;
        self.metrics.unique_store_sectors = self.store_sectors_seen.len() as u64;
        Ok(self.metrics)
    }

    fn run_wave(&mut self, ctas: &mut [Cta], rng: &mut StdRng) -> Result<()> {
        let mut ready: Vec<(u32, u32)> = Vec::new();
        for (s, c) in ctas.iter().enumerate() {
            for t in 0..c.threads.len() {
                ready.push((s as u32, t as u32));
            }
        }
        let q = self.cfg.max_quantum.max(1);
        loop {
            if ready.is_empty() {
                // Everything exited, or a deadlock.
                for c in ctas.iter() {
                    if c.live > 0 {
                        return Err(self.deadlock(c));
                    }
                }
                return Ok(());
            }
            let pick = rng.random_range(0..ready.len());
            let (s, t) = ready[pick];
            let quantum = rng.random_range(1..=q);
            let mut remove = false;
            for _ in 0..quantum {
                self.executed += 1;
                if self.executed > self.cfg.max_instructions {
                    return Err(EmuError::InstructionLimit {
                        kernel: self.kernel.name.clone(),
                        limit: self.cfg.max_instructions,
                    });
                }
                let cta = &mut ctas[s as usize];
                match self.step(cta, t as usize)? {
                    Flow::Next => {}
                    Flow::Blocked => {
                        remove = true;
                        let released = self.try_release(cta, t as usize)?;
                        for r in released {
                            if r != t {
                                ready.push((s, r));
                            } else {
                                remove = false;
                            }
                        }
                        break;
                    }
                    Flow::Exited => {
                        remove = true;
                        cta.live -= 1;
                        // A barrier may now be complete without this thread.
                        let released = self.release_barriers(cta);
                        for r in released {
                            ready.push((s, r));
                        }
                        // A warp collective waiting on this lane either completes without it or
                        // names it as exited (Divergence).
                        let warp = (t as usize / 32) * 32;
                        let waiting = (warp..(warp + 32).min(cta.threads.len()))
                            .find(|&l| cta.threads[l].state == TState::Collective);
                        if let Some(l) = waiting {
                            for r in self.try_collective(cta, l)? {
                                ready.push((s, r));
                            }
                        }
                        break;
                    }
                }
            }
            if remove {
                if let Some(i) = ready.iter().position(|&x| x == (s, t)) {
                    ready.swap_remove(i);
                }
            }
        }
    }

    fn deadlock(&self, c: &Cta) -> EmuError {
        let mut waits: Vec<String> = Vec::new();
        let mut groups: HashMap<(String, u32), Vec<u32>> = HashMap::new();
        for th in &c.threads {
            let what = match th.state {
                TState::Barrier(id) => format!("barrier {id}"),
                TState::Collective => "a warp-collective".to_string(),
                _ => continue,
            };
            let line = self.kernel.insts[th.pc as usize].line;
            groups.entry((what, line)).or_default().push(th.linear);
        }
        let mut keys: Vec<_> = groups.into_iter().collect();
        keys.sort();
        for ((what, line), threads) in keys {
            waits.push(format!(
                "{} thread(s) {} wait at {what} (line {line})",
                threads.len(),
                compress(&threads)
            ));
        }
        let exited = c
            .threads
            .iter()
            .filter(|t| t.state == TState::Exited)
            .count();
        EmuError::Deadlock {
            kernel: self.kernel.name.clone(),
            cta: c.index,
            detail: format!("{}; {exited} thread(s) exited", waits.join("; ")),
        }
    }

    fn finish_cta(&mut self, c: &mut Cta) {
        let m = &mut self.metrics;
        m.ctas += 1;
        for t in &c.threads {
            m.thread_instructions += t.icount;
        }
        // Warp instructions: per warp and pc, the largest count over its lanes.
        let n = self.ninst;
        let nthreads = c.threads.len();
        for w in (0..nthreads).step_by(32) {
            for pc in 0..n {
                let mut mx = 0;
                for l in w..(w + 32).min(nthreads) {
                    mx = mx.max(c.exec[l * n + pc]);
                }
                m.warp_instructions += u64::from(mx);
            }
        }
        for ((kind, _, _, _), req) in c.reqs.drain() {
            let mut items = req.items;
            match kind {
                ReqKind::GlobalLoad | ReqKind::GlobalStore => {
                    items.sort_unstable();
                    items.dedup();
                    if kind == ReqKind::GlobalLoad {
                        m.global_load_requests += 1;
                        m.global_load_sectors += items.len() as u64;
                        self.load_sectors_seen.extend(items.iter().copied());
                    } else {
                        m.global_store_requests += 1;
                        m.global_store_sectors += items.len() as u64;
                        self.store_sectors_seen.extend(items.iter().copied());
                    }
                }
                ReqKind::Shared | ReqKind::SharedPhase(_) => {
                    items.sort_unstable();
                    items.dedup();
                    let mut per_bank = [0u32; 32];
                    for it in &items {
                        per_bank[(it >> 59) as usize] += 1;
                    }
                    // A wavefront serves at most one word per bank (128 bytes); a request needs
                    // at least ceil(words / 32) of them (4 for a warp's 16-byte vector access).
                    let ideal = (items.len() as u64).div_ceil(32).max(1);
                    let worst = u64::from(per_bank.iter().copied().max().unwrap_or(0));
                    let wavefronts = worst.max(ideal);
                    m.shared_requests += 1;
                    m.shared_wavefronts += wavefronts;
                    m.shared_bank_conflicts += wavefronts - ideal;
                }
            }
        }
    }

    fn site(&self, c: &Cta, t: usize, pc: u32) -> Box<Site> {
        let inst = &self.kernel.insts[pc as usize];
        Box::new(Site {
            kernel: self.kernel.name.clone(),
            cta: c.index,
            thread: c.threads[t].tid,
            line: inst.line,
            instruction: self.kernel.forms[inst.form as usize].clone(),
        })
    }

    // ---- registers --------------------------------------------------------------------------

    #[inline]
    fn reg(&self, c: &Cta, t: usize, r: u32) -> u64 {
        c.regs[t * self.kernel.num_regs as usize + r as usize]
    }

    #[inline]
    fn set(&self, c: &mut Cta, t: usize, r: u32, v: u64) {
        c.regs[t * self.kernel.num_regs as usize + r as usize] = v;
    }

    #[inline]
    fn sreg(&self, c: &Cta, t: usize, s: Sreg) -> u64 {
        let th = &c.threads[t];
        let lane = th.linear % 32;
        match s {
            Sreg::Tid(d) => u64::from(th.tid[d as usize]),
            Sreg::Ntid(d) => u64::from(self.cfg.block[d as usize]),
            Sreg::Ctaid(d) => u64::from(c.index[d as usize]),
            Sreg::Nctaid(d) => u64::from(self.cfg.grid[d as usize]),
            Sreg::LaneId => u64::from(lane),
            Sreg::WarpId => u64::from(th.linear / 32),
            Sreg::NWarpId => u64::from(self.nthreads.div_ceil(32)),
            Sreg::SmId => 0,
            Sreg::NSmId => u64::from(self.cfg.resident_ctas.max(1)),
            Sreg::LanemaskEq => 1u64 << lane,
            Sreg::LanemaskLt => (1u64 << lane) - 1,
            Sreg::LanemaskLe => (1u64 << (lane + 1)) - 1,
            Sreg::LanemaskGt => (!((1u64 << (lane + 1)) - 1)) & 0xFFFF_FFFF,
            Sreg::LanemaskGe => (!((1u64 << lane) - 1)) & 0xFFFF_FFFF,
            Sreg::Clock => th.icount & 0xFFFF_FFFF,
            Sreg::Clock64 | Sreg::GlobalTimer => th.icount,
            Sreg::DynamicSmemSize => u64::from(self.cfg.dynamic_shared),
            Sreg::TotalSmemSize => c.shared.len() as u64,
        }
    }

    fn symbol_addr(&self, id: u32) -> u64 {
        let sym = &self.kernel.symbols[id as usize];
        match sym.space {
            Space::Global | Space::Const => self.globals[sym.offset as usize],
            _ => sym.offset,
        }
    }

    #[inline]
    fn val(&self, c: &Cta, t: usize, s: Src) -> u64 {
        match s {
            Src::Reg(r) => self.reg(c, t, r),
            Src::NotReg(r) => u64::from(self.reg(c, t, r) & 1 == 0),
            Src::Imm(v) => v,
            Src::Sreg(s) => self.sreg(c, t, s),
            Src::Symbol(id, off) => self.symbol_addr(id).wrapping_add(off as u64),
        }
    }

    #[inline]
    fn addr(&self, c: &Cta, t: usize, a: &Addr) -> u64 {
        let base = match a.base {
            Base::Reg(r) => self.reg(c, t, r),
            Base::Symbol(id) => self.symbol_addr(id),
            Base::None => 0,
        };
        base.wrapping_add(a.offset as u64)
    }

    // ---- memory -----------------------------------------------------------------------------

    /// Resolves a generic address to (space, address in that space).
    fn resolve(&self, space: Space, addr: u64) -> (Space, u64) {
        match space {
            Space::Generic => {
                if (SHARED_GENERIC_BASE..SHARED_GENERIC_BASE + WINDOW).contains(&addr) {
                    (Space::Shared, addr - SHARED_GENERIC_BASE)
                } else if (LOCAL_GENERIC_BASE..LOCAL_GENERIC_BASE + WINDOW).contains(&addr) {
                    (Space::Local, addr - LOCAL_GENERIC_BASE)
                } else {
                    (Space::Global, addr)
                }
            }
            Space::Const => (Space::Global, addr),
            // A .shared address is 32 bits wide: nvcc adds the constant offset of
            // `[%r + imm]` to a 32-bit register whose value may have wrapped (e.g. a base minus
            // a tile offset), and the hardware forms the sum modulo 2^32.
            Space::Shared => (Space::Shared, addr & 0xffff_ffff),
            s => (s, addr),
        }
    }

    fn record_req(&self, c: &mut Cta, t: usize, pc: u32, kind: ReqKind, item: u64) {
        let inst = c.exec[t * self.ninst + pc as usize];
        let warp = c.threads[t].linear / 32;
        c.reqs
            .entry((kind, warp, pc, inst))
            .or_default()
            .items
            .push(item);
    }

    /// Reads or writes `buf.len()` bytes at `addr` in `space` for thread `t`.
    #[allow(clippy::too_many_arguments)]
    fn access(
        &mut self,
        c: &mut Cta,
        t: usize,
        pc: u32,
        space: Space,
        addr: u64,
        buf: &mut [u8],
        write: bool,
        align: u32,
    ) -> Result<()> {
        let size = buf.len() as u32;
        let (space, addr) = self.resolve(space, addr);
        let access = if write { "write" } else { "read" };
        if align > 1 && addr % u64::from(align) != 0 {
            return Err(EmuError::Misaligned {
                access,
                size,
                address: addr,
                space: space_name(space),
                site: self.site(c, t, pc),
            });
        }
        match space {
            Space::Param => {
                if write {
                    return Err(EmuError::Fault {
                        why: "store to kernel parameter space".into(),
                        site: self.site(c, t, pc),
                    });
                }
                let end = addr.checked_add(u64::from(size));
                match end {
                    Some(e) if e <= self.params.len() as u64 => {
                        buf.copy_from_slice(&self.params[addr as usize..e as usize]);
                        Ok(())
                    }
                    _ => Err(EmuError::OutOfBounds {
                        access,
                        size,
                        address: addr,
                        space: "param",
                        site: self.site(c, t, pc),
                        nearest: format!("the parameter buffer is {} bytes", self.params.len()),
                    }),
                }
            }
            Space::Local => {
                let th = &mut c.threads[t];
                let end = addr.checked_add(u64::from(size));
                match end {
                    Some(e) if e <= th.local.len() as u64 => {
                        let r = addr as usize..e as usize;
                        if write {
                            th.local[r].copy_from_slice(buf);
                        } else {
                            buf.copy_from_slice(&th.local[r]);
                        }
                        Ok(())
                    }
                    _ => {
                        let len = th.local.len();
                        Err(EmuError::OutOfBounds {
                            access,
                            size,
                            address: addr,
                            space: "local",
                            site: self.site(c, t, pc),
                            nearest: format!("the thread's local memory is {len} bytes"),
                        })
                    }
                }
            }
            Space::Shared => self.shared_access(c, t, pc, addr, buf, write),
            _ => self.global_access(c, t, pc, addr, buf, write),
        }
    }

    fn global_access(
        &mut self,
        c: &mut Cta,
        t: usize,
        pc: u32,
        addr: u64,
        buf: &mut [u8],
        write: bool,
    ) -> Result<()> {
        let size = buf.len() as u64;
        let access = if write { "write" } else { "read" };
        let alloc = match self.view.find(addr, size) {
            Ok(a) => a.clone(),
            Err(nearest) => {
                return Err(EmuError::OutOfBounds {
                    access,
                    size: size as u32,
                    address: addr,
                    space: "global",
                    site: self.site(c, t, pc),
                    nearest,
                })
            }
        };
        let off = (addr - alloc.base) as usize;
        {
            let mut d = alloc.data.lock().unwrap_or_else(|p| p.into_inner());
            if write {
                d.bytes[off..off + buf.len()].copy_from_slice(buf);
                d.shadow[off..off + buf.len()].fill(INIT);
            } else {
                if self.cfg.checks.initcheck {
                    if let Some(&s) = d.shadow[off..off + buf.len()].iter().find(|&&s| s != INIT) {
                        drop(d);
                        return Err(EmuError::UninitializedRead {
                            state: memory::shadow_name(s),
                            size: size as u32,
                            address: addr,
                            space: "global",
                            site: self.site(c, t, pc),
                        });
                    }
                }
                buf.copy_from_slice(&d.bytes[off..off + buf.len()]);
            }
        }
        if write {
            self.metrics.global_bytes_written += size;
        } else {
            self.metrics.global_bytes_read += size;
        }
        let kind = if write {
            ReqKind::GlobalStore
        } else {
            ReqKind::GlobalLoad
        };
        let first = addr / 32;
        let last = (addr + size - 1) / 32;
        for s in first..=last {
            self.record_req(c, t, pc, kind, s);
        }
        Ok(())
    }

    fn shared_access(
        &mut self,
        c: &mut Cta,
        t: usize,
        pc: u32,
        addr: u64,
        buf: &mut [u8],
        write: bool,
    ) -> Result<()> {
        let size = buf.len();
        let access = if write { "write" } else { "read" };
        let end = addr.checked_add(size as u64);
        let Some(end) = end.filter(|&e| e <= c.shared.len() as u64) else {
            return Err(EmuError::OutOfBounds {
                access,
                size: size as u32,
                address: addr,
                space: "shared",
                site: self.site(c, t, pc),
                nearest: format!(
                    "the CTA has {} bytes of shared memory ({} static + {} dynamic)",
                    c.shared.len(),
                    self.kernel.dynamic_shared_offset,
                    self.cfg.dynamic_shared
                ),
            });
        };
        let r = addr as usize..end as usize;
        if !write && self.cfg.checks.initcheck {
            if let Some(&s) = c.shadow[r.clone()].iter().find(|&&s| s != INIT) {
                return Err(EmuError::UninitializedRead {
                    state: memory::shadow_name(s),
                    size: size as u32,
                    address: addr,
                    space: "shared",
                    site: self.site(c, t, pc),
                });
            }
        }
        if self.cfg.checks.racecheck {
            self.race_check(c, t, pc, r.clone(), write)?;
        }
        if write {
            c.shared[r.clone()].copy_from_slice(buf);
            c.shadow[r].fill(INIT);
        } else {
            buf.copy_from_slice(&c.shared[r]);
        }
        // Banks: 32 banks of 4 bytes; one item per distinct word touched.
        for w in (addr / 4)..=((end - 1) / 4) {
            let bank = w % 32;
            let kind = self.phase.map_or(ReqKind::Shared, ReqKind::SharedPhase);
            self.record_req(c, t, pc, kind, (bank << 59) | w);
        }
        Ok(())
    }

    fn race_check(
        &self,
        c: &mut Cta,
        t: usize,
        pc: u32,
        range: std::ops::Range<usize>,
        write: bool,
    ) -> Result<()> {
        if c.race.is_empty() {
            // Racecheck off, or an atomic (atomics are not races): nothing to track.
            return Ok(());
        }
        let me = t as u32;
        let warp = me / 32;
        let epoch = c.epoch;
        for off in range {
            let cell = c.race[off];
            let other_warp = |o: u32| o != NO_THREAD && o != me && o / 32 != warp;
            let conflict = if cell.w_epoch == epoch && other_warp(cell.w_thread) {
                Some((cell.w_thread, cell.w_pc, "write"))
            } else if write && cell.r_epoch == epoch && other_warp(cell.r_thread) {
                Some((cell.r_thread, cell.r_pc, "read"))
            } else {
                None
            };
            if let Some((o, opc, oacc)) = conflict {
                return Err(EmuError::SharedRace {
                    offset: off as u64,
                    first: self.site(c, o as usize, opc),
                    first_access: oacc,
                    second: self.site(c, t, pc),
                    second_access: if write { "write" } else { "read" },
                });
            }
            let cell = &mut c.race[off];
            if write {
                cell.w_thread = me;
                cell.w_epoch = epoch;
                cell.w_pc = pc;
            } else if !(cell.r_epoch == epoch && cell.r_thread != me && cell.r_thread / 32 != warp)
            {
                // Keep the first reader from another warp (the one a later write races with).
                cell.r_thread = me;
                cell.r_epoch = epoch;
                cell.r_pc = pc;
            }
        }
        Ok(())
    }

    // ---- synchronisation --------------------------------------------------------------------

    fn release_barriers(&self, c: &mut Cta) -> Vec<u32> {
        let live = c.live;
        let mut released = Vec::new();
        let ids: Vec<u32> = c.barriers.keys().copied().collect();
        for id in ids {
            let b = c.barriers.get_mut(&id).expect("listed");
            let expected = b.expected.unwrap_or(live);
            if !b.waiting.is_empty() && b.arrived >= expected {
                let waiting = std::mem::take(&mut b.waiting);
                b.arrived = 0;
                b.expected = None;
                for w in waiting {
                    c.threads[w as usize].state = TState::Ready;
                    c.threads[w as usize].pc += 1;
                    released.push(w);
                }
                c.epoch += 1;
            }
        }
        released
    }

    /// After thread `t` blocked: release its barrier or execute its warp collective if complete.
    fn try_release(&mut self, c: &mut Cta, t: usize) -> Result<Vec<u32>> {
        match c.threads[t].state {
            TState::Barrier(_) => Ok(self.release_barriers(c)),
            TState::Collective => self.try_collective(c, t),
            _ => Ok(Vec::new()),
        }
    }

    fn collective_mask(&self, c: &Cta, t: usize, inst: &Inst) -> u32 {
        let warp_base = (c.threads[t].linear / 32) * 32;
        let lanes = (self.nthreads - warp_base).min(32);
        let full = if lanes == 32 {
            u32::MAX
        } else {
            (1u32 << lanes) - 1
        };
        match &inst.op {
            Op::Shfl { mask, .. }
            | Op::Vote { mask, .. }
            | Op::Redux { mask, .. }
            | Op::WarpSync { mask } => self.val(c, t, *mask) as u32,
            _ => full,
        }
    }

    fn try_collective(&mut self, c: &mut Cta, t: usize) -> Result<Vec<u32>> {
        let pc = c.threads[t].pc;
        let kernel = self.kernel;
        let inst = &kernel.insts[pc as usize];
        let maskv = self.collective_mask(c, t, inst);
        let warp_base = (c.threads[t].linear / 32) * 32;
        let me = c.threads[t].linear % 32;
        if maskv & (1 << me) == 0 {
            return Err(EmuError::Divergence {
                detail: format!(
                    "member mask {maskv:#010x} of a warp collective does not include the executing lane {me}: {}",
                    self.site(c, t, pc)
                ),
            });
        }
        let mut members = Vec::new();
        for l in 0..32u32 {
            if maskv & (1 << l) == 0 {
                continue;
            }
            let idx = (warp_base + l) as usize;
            let Some(th) = c.threads.get(idx) else {
                return Err(EmuError::Divergence {
                    detail: format!(
                        "member mask {maskv:#010x} names lane {l}, which does not exist (block of {} threads): {}",
                        self.nthreads,
                        self.site(c, t, pc)
                    ),
                });
            };
            match th.state {
                TState::Exited => {
                    return Err(EmuError::Divergence {
                        detail: format!(
                            "member mask {maskv:#010x} names lane {l}, which has exited: {}",
                            self.site(c, t, pc)
                        ),
                    })
                }
                TState::Collective if th.pc == pc => members.push(idx),
                // Not everyone is here yet (a lane still running, at a barrier, or completing
                // another warp collective with a smaller mask first: wait; if it never comes,
                // the deadlock detector names who waits where).
                _ => return Ok(Vec::new()),
            }
        }
        self.exec_collective(c, inst, pc, &members)?;
        let mut released = Vec::new();
        for &m in &members {
            let th = &mut c.threads[m];
            th.state = TState::Ready;
            th.pc += 1;
            released.push(m as u32);
        }
        Ok(released)
    }

    fn exec_collective(
        &mut self,
        c: &mut Cta,
        inst: &Inst,
        pc: u32,
        members: &[usize],
    ) -> Result<()> {
        let warp_base = (members[0] / 32) * 32;
        let lane_of = |m: usize| m - warp_base;
        // Guard: lanes whose guard is false do not participate (their predicate was checked at
        // arrival, so all members here execute).
        match &inst.op {
            Op::WarpSync { .. } => {}
            Op::Shfl {
                mode,
                d,
                dp,
                a,
                b,
                c: cc,
                ..
            } => {
                let vals: Vec<(usize, u64)> = members
                    .iter()
                    .map(|&m| (lane_of(m), self.val(c, m, *a)))
                    .collect();
                let mut by_lane = [None; 32];
                for (l, v) in &vals {
                    by_lane[*l] = Some(*v);
                }
                let mut outs = Vec::new();
                for &m in members {
                    let lane = lane_of(m) as u32;
                    let bval = self.val(c, m, *b) as u32;
                    let cval = self.val(c, m, *cc) as u32;
                    // PTX ISA 9.7.8.6 shfl.sync: c packs clamp (bits 0-4) and segment mask (8-12).
                    let clamp = cval & 0x1F;
                    let seg = (cval >> 8) & 0x1F;
                    let max_lane = (lane & seg) | (clamp & !seg);
                    let min_lane = lane & seg;
                    let (j, pval) = match mode {
                        ShflMode::Up => {
                            let j = i64::from(lane) - i64::from(bval & 0x1F);
                            (j, j >= i64::from(max_lane))
                        }
                        ShflMode::Down => {
                            let j = i64::from(lane + (bval & 0x1F));
                            (j, j <= i64::from(max_lane))
                        }
                        ShflMode::Bfly => {
                            let j = i64::from(lane ^ (bval & 0x1F));
                            (j, j <= i64::from(max_lane))
                        }
                        ShflMode::Idx => {
                            let j = i64::from(min_lane | ((bval & 0x1F) & !seg));
                            (j, j <= i64::from(max_lane))
                        }
                    };
                    let src_lane = if pval { j as usize } else { lane as usize };
                    let v = match by_lane.get(src_lane).copied().flatten() {
                        Some(v) => v,
                        None => {
                            return Err(EmuError::Divergence {
                                detail: format!(
                                    "shfl.sync reads lane {src_lane}, which is not in the member mask: {}",
                                    self.site(c, m, pc)
                                ),
                            })
                        }
                    };
                    outs.push((m, v & 0xFFFF_FFFF, pval));
                }
                for (m, v, p) in outs {
                    self.set(c, m, *d, v);
                    if let Some(dp) = dp {
                        self.set(c, m, *dp, u64::from(p));
                    }
                }
            }
            Op::Vote { mode, d, a, .. } => {
                let mut ballot = 0u32;
                for &m in members {
                    if self.val(c, m, *a) & 1 == 1 {
                        ballot |= 1 << lane_of(m);
                    }
                }
                let member_bits: u32 = members.iter().map(|&m| 1u32 << lane_of(m)).sum();
                let v = match mode {
                    VoteMode::Ballot => u64::from(ballot),
                    VoteMode::All => u64::from(ballot == member_bits),
                    VoteMode::Any => u64::from(ballot != 0),
                    VoteMode::Uni => u64::from(ballot == 0 || ballot == member_bits),
                };
                for &m in members {
                    self.set(c, m, *d, v);
                }
            }
            Op::Redux { op, ty, d, a, .. } => {
                let signed = ty.is_signed();
                let vals: Vec<u64> = members
                    .iter()
                    .map(|&m| self.val(c, m, *a) & 0xFFFF_FFFF)
                    .collect();
                let mut acc = vals[0];
                for &v in &vals[1..] {
                    acc = match op {
                        IntOp::Add => (acc + v) & 0xFFFF_FFFF,
                        IntOp::And => acc & v,
                        IntOp::Or => acc | v,
                        IntOp::Xor => acc ^ v,
                        IntOp::Min if signed => {
                            if sext(v, 32) < sext(acc, 32) {
                                v
                            } else {
                                acc
                            }
                        }
                        IntOp::Max if signed => {
                            if sext(v, 32) > sext(acc, 32) {
                                v
                            } else {
                                acc
                            }
                        }
                        IntOp::Min => acc.min(v),
                        _ => acc.max(v),
                    };
                }
                for &m in members {
                    self.set(c, m, *d, acc);
                }
            }
            Op::Ldmatrix {
                num,
                trans,
                ds,
                addr,
            } => {
                let mut row_addr = [0u64; 32];
                for &m in members {
                    row_addr[lane_of(m)] = self.addr(c, m, addr);
                }
                let lanes = fragments::ldmatrix_address_lanes(*num as usize);
                for l in lanes.clone() {
                    if l >= members.len() {
                        return Err(EmuError::Divergence {
                            detail: format!(
                                "ldmatrix needs lanes 0..{} but the warp has {} threads",
                                lanes.end,
                                members.len()
                            ),
                        });
                    }
                }
                let mut err = None;
                let regs = {
                    let this = &mut *self;
                    let mut read_row = |a: u64| -> Result<[u16; 8]> {
                        // Which lane supplied this address (for the error site).
                        let lane = row_addr.iter().position(|&x| x == a).unwrap_or(0);
                        let m = warp_base + lane;
                        let (space, sa) = this.resolve(Space::Shared, a);
                        let mut buf = [0u8; 16];
                        this.phase = Some((lane / 8) as u8);
                        let r = this.access(c, m, pc, space, sa, &mut buf, false, 16);
                        this.phase = None;
                        r?;
                        let mut row = [0u16; 8];
                        for (i, r) in row.iter_mut().enumerate() {
                            *r = u16::from_le_bytes([buf[2 * i], buf[2 * i + 1]]);
                        }
                        Ok(row)
                    };
                    match fragments::ldmatrix(*num as usize, *trans, &row_addr, &mut read_row) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            err = Some(e);
                            None
                        }
                    }
                };
                if let Some(e) = err {
                    return Err(e);
                }
                let regs = regs.expect("no error");
                for &m in members {
                    for (j, &dreg) in ds.iter().enumerate() {
                        self.set(c, m, dreg, u64::from(regs[lane_of(m)][j]));
                    }
                }
            }
            Op::Mma {
                k,
                bf16,
                d,
                a,
                b,
                c: cs,
            } => {
                if members.len() != 32 {
                    return Err(EmuError::Divergence {
                        detail: format!(
                            "mma.sync.aligned needs all 32 lanes, {} arrived",
                            members.len()
                        ),
                    });
                }
                let ty = if *bf16 { MmaInput::Bf16 } else { MmaInput::F16 };
                let mut cfrag = [[0f32; 4]; 32];
                for &m in members {
                    for i in 0..4 {
                        cfrag[lane_of(m)][i] = f32b(self.val(c, m, cs[i]));
                    }
                }
                let out = if *k == 16 {
                    let mut af = [[0u32; 4]; 32];
                    let mut bf = [[0u32; 2]; 32];
                    for &m in members {
                        for i in 0..4 {
                            af[lane_of(m)][i] = self.val(c, m, a[i]) as u32;
                        }
                        for i in 0..2 {
                            bf[lane_of(m)][i] = self.val(c, m, b[i]) as u32;
                        }
                    }
                    fragments::mma_m16n8k16(ty, &af, &bf, &cfrag)
                } else {
                    let mut af = [[0u32; 2]; 32];
                    let mut bf = [[0u32; 1]; 32];
                    for &m in members {
                        for i in 0..2 {
                            af[lane_of(m)][i] = self.val(c, m, a[i]) as u32;
                        }
                        bf[lane_of(m)][0] = self.val(c, m, b[0]) as u32;
                    }
                    fragments::mma_m16n8k8(ty, &af, &bf, &cfrag)
                };
                for &m in members {
                    for i in 0..4 {
                        self.set(c, m, d[i], b32f(out[lane_of(m)][i]));
                    }
                }
                self.metrics.flops += 2 * 16 * 8 * u64::from(*k);
            }
            other => unreachable!("not a collective: {other:?}"),
        }
        Ok(())
    }

    // ---- cp.async ---------------------------------------------------------------------------

    fn complete_copies(&mut self, c: &mut Cta, t: usize, copies: Vec<PendingCopy>) -> Result<()> {
        for p in copies {
            // The write lands now: shadow becomes initialised, racecheck sees a write.
            let r = p.dst as usize..p.dst as usize + p.data.len();
            for s in &mut c.shadow[r.clone()] {
                *s = memory::UNINIT; // let the checked write below set INIT
            }
            let mut data = p.data;
            self.shared_access(c, t, p.pc, p.dst, &mut data, true)?;
        }
        Ok(())
    }

    // ---- one instruction --------------------------------------------------------------------

    fn step(&mut self, c: &mut Cta, t: usize) -> Result<Flow> {
        let pc = c.threads[t].pc;
        let inst = &self.kernel.insts[pc as usize];
        c.threads[t].icount += 1;
        c.exec[t * self.ninst + pc as usize] += 1;
        self.class_counts[inst.class as usize] += 1;
        if let Some((p, neg)) = inst.guard {
            let v = self.reg(c, t, p) & 1 == 1;
            if v == neg {
                c.threads[t].pc += 1;
                return Ok(Flow::Next);
            }
        }
        let kernel = self.kernel;
        let inst = &kernel.insts[pc as usize];
        let mut next = pc + 1;
        match &inst.op {
            Op::Mov { d, a, bits } => {
                let v = self.val(c, t, *a) & mask(*bits);
                self.set(c, t, *d, v);
            }
            Op::Pack {
                d,
                parts,
                part_bits,
            } => {
                let mut v = 0u64;
                for (i, p) in parts.iter().enumerate() {
                    v |= (self.val(c, t, *p) & mask(*part_bits)) << (i as u32 * part_bits);
                }
                self.set(c, t, *d, v);
            }
            Op::Unpack { ds, a, part_bits } => {
                let v = self.val(c, t, *a);
                for (i, d) in ds.iter().enumerate() {
                    if let Some(d) = d {
                        self.set(c, t, *d, (v >> (i as u32 * part_bits)) & mask(*part_bits));
                    }
                }
            }
            Op::Int {
                op,
                ty,
                d,
                a,
                b,
                c: cc,
                sat,
            } => {
                let av = self.val(c, t, *a);
                let bv = self.val(c, t, *b);
                let cv = self.val(c, t, *cc);
                let v = int_op(*op, *ty, av, bv, cv, *sat);
                self.set(c, t, *d, v);
            }
            Op::Float {
                op,
                ty,
                d,
                a,
                b,
                c: cc,
                rnd,
                approx,
                full,
                nan,
                ftz,
                sat,
            } => {
                let av = self.val(c, t, *a);
                let bv = self.val(c, t, *b);
                let cv = self.val(c, t, *cc);
                let v = float_op(
                    *op,
                    *ty,
                    [av, bv, cv],
                    *rnd,
                    FloatFlags {
                        approx: *approx,
                        full: *full,
                        ftz: *ftz,
                        sat: *sat,
                        nan: *nan,
                    },
                );
                self.metrics.flops += flops_of(*op, *ty);
                self.set(c, t, *d, v);
            }
            Op::Setp {
                cmp,
                ty,
                d,
                d2,
                a,
                b,
                combine,
            } => {
                let av = self.val(c, t, *a);
                let bv = self.val(c, t, *b);
                let r = compare(*cmp, *ty, av, bv);
                let (r1, r2) = match combine {
                    Some((op, p)) => {
                        let pv = self.val(c, t, *p) & 1 == 1;
                        (bool_op(*op, r, pv), bool_op(*op, !r, pv))
                    }
                    None => (r, !r),
                };
                self.set(c, t, *d, u64::from(r1));
                if let Some(d2) = d2 {
                    self.set(c, t, *d2, u64::from(r2));
                }
            }
            Op::Selp { d, a, b, p, bits } => {
                let v = if self.val(c, t, *p) & 1 == 1 {
                    self.val(c, t, *a)
                } else {
                    self.val(c, t, *b)
                };
                self.set(c, t, *d, v & mask(*bits));
            }
            Op::PredLogic { op, d, a, b } => {
                let av = self.val(c, t, *a) & 1 == 1;
                let v = match op {
                    None => !av,
                    Some(o) => bool_op(*o, av, self.val(c, t, *b) & 1 == 1),
                };
                self.set(c, t, *d, u64::from(v));
            }
            Op::Cvt {
                d,
                a,
                dty,
                sty,
                frnd,
                irnd,
                sat,
                ftz,
                relu,
            } => {
                let v = self.val(c, t, *a);
                let r = cvt(v, *dty, *sty, *frnd, *irnd, *sat, *ftz, *relu);
                self.set(c, t, *d, r);
            }
            Op::CvtPack {
                d,
                hi,
                lo,
                bf16,
                relu,
            } => {
                let h = f32b(self.val(c, t, *hi));
                let l = f32b(self.val(c, t, *lo));
                let conv = |x: f32| {
                    if *bf16 {
                        nx::f32_to_bf16(x, FloatRound::Rn, *relu, false)
                    } else {
                        nx::f32_to_f16(x, FloatRound::Rn, *relu, false)
                    }
                };
                // PTX ISA cvt: "d = {cvt(a), cvt(b)}" with a in the upper half.
                let v = (u64::from(conv(h)) << 16) | u64::from(conv(l));
                self.set(c, t, *d, v);
            }
            Op::Cvta {
                d,
                a,
                to_space,
                space,
                bits,
            } => {
                let v = self.val(c, t, *a);
                let base = match space {
                    Space::Shared => SHARED_GENERIC_BASE,
                    Space::Local => LOCAL_GENERIC_BASE,
                    _ => 0,
                };
                let r = if *to_space {
                    v.wrapping_sub(base)
                } else {
                    v.wrapping_add(base)
                };
                self.set(c, t, *d, r & mask(*bits));
            }
            Op::Ld {
                space,
                ty,
                ds,
                addr,
                ..
            } => {
                let base = self.addr(c, t, addr);
                let eb = ty.bytes();
                let n = ds.len() as u32;
                let mut buf = vec![0u8; (eb * n) as usize];
                self.access(c, t, pc, *space, base, &mut buf, false, eb * n)?;
                for (i, dreg) in ds.iter().enumerate() {
                    let Some(dreg) = dreg else { continue };
                    let mut w = [0u8; 8];
                    let chunk = &buf[i * eb as usize..(i + 1) * eb as usize];
                    w[..chunk.len()].copy_from_slice(&chunk[..chunk.len().min(8)]);
                    let raw = u64::from_le_bytes(w);
                    let v = if ty.is_signed() {
                        sext(raw, ty.bits()) as u64
                    } else {
                        raw
                    };
                    self.set(c, t, *dreg, v);
                }
            }
            Op::St {
                space,
                ty,
                srcs,
                addr,
                ..
            } => {
                let base = self.addr(c, t, addr);
                let eb = ty.bytes() as usize;
                let mut buf = vec![0u8; eb * srcs.len()];
                for (i, s) in srcs.iter().enumerate() {
                    let v = self.val(c, t, *s).to_le_bytes();
                    buf[i * eb..(i + 1) * eb].copy_from_slice(&v[..eb.min(8)]);
                }
                let n = buf.len() as u32;
                self.access(c, t, pc, *space, base, &mut buf, true, n)?;
            }
            Op::Atom {
                space,
                op,
                ty,
                d,
                addr,
                b,
                c: cc,
                ..
            } => {
                let a = self.addr(c, t, addr);
                let eb = ty.bytes();
                let bv = self.val(c, t, *b);
                let cv = self.val(c, t, *cc);
                let (sp, ra) = self.resolve(*space, a);
                // Read-modify-write as one step (nothing else runs in between in this thread's
                // step; other devices' threads are excluded by the allocation lock below for
                // global memory).
                let old = if sp == Space::Global {
                    self.atomic_global(c, t, pc, ra, eb, |old| atom_op(*op, *ty, old, bv, cv))?
                } else {
                    // Atomics are not races: bypass racecheck for the RMW.
                    let saved = std::mem::take(&mut c.race);
                    let mut buf = vec![0u8; eb as usize];
                    let r = self.access(c, t, pc, sp, ra, &mut buf, false, eb);
                    let res = r.and_then(|_| {
                        let mut w = [0u8; 8];
                        w[..eb as usize].copy_from_slice(&buf);
                        let old = u64::from_le_bytes(w);
                        let new = atom_op(*op, *ty, old, bv, cv);
                        let mut nb = new.to_le_bytes()[..eb as usize].to_vec();
                        self.access(c, t, pc, sp, ra, &mut nb, true, eb)
                            .map(|_| old)
                    });
                    c.race = saved;
                    res?
                };
                if let Some(d) = d {
                    let v = if ty.is_signed() {
                        sext(old, ty.bits()) as u64
                    } else {
                        old
                    };
                    self.set(c, t, *d, v);
                }
            }
            Op::Bra { target } => next = *target,
            Op::Exit => {
                let pending: Vec<PendingCopy> = {
                    let th = &mut c.threads[t];
                    let mut all: Vec<PendingCopy> = th.cp_groups.drain(..).flatten().collect();
                    all.append(&mut th.cp_open);
                    all
                };
                self.complete_copies(c, t, pending)?;
                c.threads[t].state = TState::Exited;
                return Ok(Flow::Exited);
            }
            Op::Bar { id, count, arrive } => {
                let idv = self.val(c, t, *id) as u32;
                let cnt = count.map(|s| self.val(c, t, s) as u32);
                let b = c.barriers.entry(idv).or_default();
                b.arrived += 1;
                if let Some(n) = cnt {
                    b.expected = Some(n);
                }
                if *arrive {
                    c.threads[t].pc = next;
                    return Ok(Flow::Next);
                }
                b.waiting.push(t as u32);
                c.threads[t].state = TState::Barrier(idv);
                return Ok(Flow::Blocked);
            }
            Op::WarpSync { .. }
            | Op::Shfl { .. }
            | Op::Vote { .. }
            | Op::Redux { .. }
            | Op::Ldmatrix { .. }
            | Op::Mma { .. } => {
                c.threads[t].state = TState::Collective;
                return Ok(Flow::Blocked);
            }
            Op::Fence | Op::Nop => {}
            Op::CpAsync {
                dst,
                src,
                size,
                src_size,
            } => {
                let da = self.addr(c, t, dst);
                let sa = self.addr(c, t, src);
                let (dsp, da) = self.resolve(Space::Shared, da);
                let n = *size;
                let valid = src_size.map_or(n, |s| (self.val(c, t, s) as u32).min(n));
                let mut data = vec![0u8; n as usize];
                if valid > 0 {
                    let (ssp, sa) = self.resolve(Space::Global, sa);
                    self.access(c, t, pc, ssp, sa, &mut data[..valid as usize], false, n)?;
                }
                // Check the destination now (bounds, alignment), then mark it pending.
                if dsp != Space::Shared
                    || da + u64::from(n) > c.shared.len() as u64
                    || da % u64::from(n) != 0
                {
                    let mut probe = vec![0u8; n as usize];
                    self.access(c, t, pc, dsp, da, &mut probe, true, n)?;
                }
                c.shadow[da as usize..(da + u64::from(n)) as usize].fill(PENDING);
                c.threads[t].cp_open.push(PendingCopy { dst: da, data, pc });
            }
            Op::CpAsyncCommit => {
                let th = &mut c.threads[t];
                let g = std::mem::take(&mut th.cp_open);
                th.cp_groups.push_back(g);
            }
            Op::CpAsyncWait { n, commit_first } => {
                let mut done = Vec::new();
                {
                    let th = &mut c.threads[t];
                    if *commit_first {
                        let g = std::mem::take(&mut th.cp_open);
                        th.cp_groups.push_back(g);
                    }
                    while th.cp_groups.len() > *n as usize {
                        done.extend(th.cp_groups.pop_front().expect("nonempty"));
                    }
                }
                self.complete_copies(c, t, done)?;
            }
            Op::Prmt { d, a, b, c: cc } => {
                let av = self.val(c, t, *a) as u32;
                let bv = self.val(c, t, *b) as u32;
                let sel = self.val(c, t, *cc) as u32;
                // PTX ISA prmt (default mode): bytes of {b, a} selected by 4-bit nibbles; bit 3
                // of a nibble replicates the sign of the selected byte.
                let bytes = (u64::from(bv) << 32 | u64::from(av)).to_le_bytes();
                let mut out = 0u32;
                for i in 0..4 {
                    let s = (sel >> (4 * i)) & 0xF;
                    let byte = bytes[(s & 7) as usize];
                    let byte = if s & 8 != 0 {
                        if byte & 0x80 != 0 {
                            0xFF
                        } else {
                            0
                        }
                    } else {
                        byte
                    };
                    out |= u32::from(byte) << (8 * i);
                }
                self.set(c, t, *d, u64::from(out));
            }
            Op::Bfe { ty, d, a, b, c: cc } => {
                // PTX ISA bfe: d[i] = (i < len && pos + i <= msb) ? a[pos + i] : sbit, where
                // sbit = 0 for unsigned types or len == 0, else a[min(pos + len - 1, msb)].
                let bits = ty.bits();
                let msb = bits - 1;
                let av = self.val(c, t, *a);
                let pos = (self.val(c, t, *b) & 0xFF) as u32;
                let len = (self.val(c, t, *cc) & 0xFF) as u32;
                let sbit = if !ty.is_signed() || len == 0 {
                    0
                } else {
                    (av >> (pos + len - 1).min(msb)) & 1
                };
                let mut v = 0u64;
                for i in 0..bits {
                    let bit = if i < len && pos + i <= msb {
                        (av >> (pos + i)) & 1
                    } else {
                        sbit
                    };
                    v |= bit << i;
                }
                self.set(c, t, *d, v);
            }
            Op::Bfi {
                ty,
                d,
                f,
                b,
                pos,
                len,
            } => {
                let bits = ty.bits();
                let fv = self.val(c, t, *f);
                let bv = self.val(c, t, *b) & mask(bits);
                let p = (self.val(c, t, *pos) & 0xFF) as u32;
                let l = (self.val(c, t, *len) & 0xFF) as u32;
                let v = if l == 0 || p >= bits {
                    bv
                } else {
                    let l = l.min(bits - p);
                    let m = mask(l) << p;
                    (bv & !m) | ((fv << p) & m)
                };
                self.set(c, t, *d, v & mask(bits));
            }
            Op::Lop3 {
                d,
                a,
                b,
                c: cc,
                lut,
            } => {
                let av = self.val(c, t, *a) as u32;
                let bv = self.val(c, t, *b) as u32;
                let cv = self.val(c, t, *cc) as u32;
                let mut out = 0u32;
                for i in 0..32 {
                    let idx = (((av >> i) & 1) << 2) | (((bv >> i) & 1) << 1) | ((cv >> i) & 1);
                    // PTX ISA lop3: ta = 0xF0, tb = 0xCC, tc = 0xAA; bit index = a*4 + b*2 + c.
                    out |= u32::from((lut >> idx) & 1) << i;
                }
                self.set(c, t, *d, u64::from(out));
            }
            Op::Shf {
                left,
                clamp,
                d,
                a,
                b,
                c: cc,
            } => {
                let lo = self.val(c, t, *a) & 0xFFFF_FFFF;
                let hi = self.val(c, t, *b) & 0xFFFF_FFFF;
                let n = self.val(c, t, *cc) as u32;
                let n = if *clamp { n.min(32) } else { n & 31 };
                let both = (hi << 32) | lo;
                let v = if *left {
                    ((both << n) >> 32) & 0xFFFF_FFFF
                } else {
                    (both >> n) & 0xFFFF_FFFF
                };
                self.set(c, t, *d, v);
            }
            Op::ActiveMask { d } => {
                let warp = (t / 32) * 32;
                let mut mask = 0u64;
                for l in warp..(warp + 32).min(c.threads.len()) {
                    if c.threads[l].state != TState::Exited {
                        mask |= 1 << (l - warp);
                    }
                }
                self.set(c, t, *d, mask);
            }
            Op::Trap => {
                return Err(EmuError::Fault {
                    why: "trap".into(),
                    site: self.site(c, t, pc),
                })
            }
        }
        c.threads[t].pc = next;
        Ok(Flow::Next)
    }

    fn atomic_global(
        &mut self,
        c: &mut Cta,
        t: usize,
        pc: u32,
        addr: u64,
        eb: u32,
        f: impl FnOnce(u64) -> u64,
    ) -> Result<u64> {
        if addr % u64::from(eb) != 0 {
            return Err(EmuError::Misaligned {
                access: "atomic",
                size: eb,
                address: addr,
                space: "global",
                site: self.site(c, t, pc),
            });
        }
        let alloc = match self.view.find(addr, u64::from(eb)) {
            Ok(a) => a.clone(),
            Err(nearest) => {
                return Err(EmuError::OutOfBounds {
                    access: "atomic",
                    size: eb,
                    address: addr,
                    space: "global",
                    site: self.site(c, t, pc),
                    nearest,
                })
            }
        };
        let off = (addr - alloc.base) as usize;
        let old = {
            let mut d = alloc.data.lock().unwrap_or_else(|p| p.into_inner());
            if self.cfg.checks.initcheck {
                if let Some(&s) = d.shadow[off..off + eb as usize]
                    .iter()
                    .find(|&&s| s != INIT)
                {
                    drop(d);
                    return Err(EmuError::UninitializedRead {
                        state: memory::shadow_name(s),
                        size: eb,
                        address: addr,
                        space: "global",
                        site: self.site(c, t, pc),
                    });
                }
            }
            let mut w = [0u8; 8];
            w[..eb as usize].copy_from_slice(&d.bytes[off..off + eb as usize]);
            let old = u64::from_le_bytes(w);
            let new = f(old);
            d.bytes[off..off + eb as usize].copy_from_slice(&new.to_le_bytes()[..eb as usize]);
            d.shadow[off..off + eb as usize].fill(INIT);
            old
        };
        self.metrics.global_bytes_read += u64::from(eb);
        self.metrics.global_bytes_written += u64::from(eb);
        self.record_req(c, t, pc, ReqKind::GlobalStore, addr / 32);
        Ok(old)
    }
}

fn compress(threads: &[u32]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < threads.len() {
        let start = threads[i];
        let mut end = start;
        while i + 1 < threads.len() && threads[i + 1] == end + 1 {
            i += 1;
            end = threads[i];
        }
        out.push(if start == end {
            format!("{start}")
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

fn bool_op(op: BoolOp, a: bool, b: bool) -> bool {
    match op {
        BoolOp::And => a && b,
        BoolOp::Or => a || b,
        BoolOp::Xor => a ^ b,
    }
}

fn flops_of(op: FloatOp, ty: Type) -> u64 {
    let lanes = if matches!(ty, Type::F16x2 | Type::Bf16x2) {
        2
    } else {
        1
    };
    match op {
        FloatOp::Add | FloatOp::Sub | FloatOp::Mul => lanes,
        FloatOp::Fma => 2 * lanes,
        _ => 0,
    }
}

/// Integer ops (PTX ISA 9.7.1 "Integer Arithmetic Instructions", 9.7.7 logic and shift).
pub(crate) fn int_op(op: IntOp, ty: Type, a: u64, b: u64, c: u64, sat: bool) -> u64 {
    let bits = ty.bits();
    let m = mask(bits);
    let signed = ty.is_signed();
    let sa = sext(a, bits);
    let sb = sext(b, bits);
    let ua = a & m;
    let ub = b & m;
    let prod = || -> i128 {
        if signed {
            i128::from(sa) * i128::from(sb)
        } else {
            i128::from(ua) * i128::from(ub)
        }
    };
    match op {
        IntOp::Add | IntOp::Sub => {
            if sat {
                // .sat only exists for .s32.
                let r = if op == IntOp::Add {
                    i64::from(sa as i32).saturating_add(i64::from(sb as i32))
                } else {
                    i64::from(sa as i32).saturating_sub(i64::from(sb as i32))
                };
                (r.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as u64) & m
            } else if op == IntOp::Add {
                a.wrapping_add(b) & m
            } else {
                a.wrapping_sub(b) & m
            }
        }
        IntOp::MulLo => (prod() as u64) & m,
        IntOp::MulHi => ((prod() >> bits) as u64) & m,
        IntOp::MulWide => (prod() as u64) & mask(bits * 2),
        IntOp::MadLo => ((prod() as u64).wrapping_add(c)) & m,
        IntOp::MadHi => {
            let hi = ((prod() >> bits) as u64) & m;
            if sat {
                let r = i64::from(hi as i32) + i64::from(c as i32);
                (r.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as u64) & m
            } else {
                hi.wrapping_add(c) & m
            }
        }
        IntOp::MadWide => ((prod() as u64).wrapping_add(c)) & mask(bits * 2),
        IntOp::Mul24Lo => {
            let x = if signed {
                sext(a, 24) as i128
            } else {
                (a & 0xFF_FFFF) as i128
            };
            let y = if signed {
                sext(b, 24) as i128
            } else {
                (b & 0xFF_FFFF) as i128
            };
            ((x * y) as u64) & m
        }
        IntOp::Mad24Lo => {
            let x = if signed {
                sext(a, 24) as i128
            } else {
                (a & 0xFF_FFFF) as i128
            };
            let y = if signed {
                sext(b, 24) as i128
            } else {
                (b & 0xFF_FFFF) as i128
            };
            (((x * y) as u64).wrapping_add(c)) & m
        }
        IntOp::Div => {
            // PTX: division by zero gives an unspecified value (not a trap); we return all ones.
            if ub == 0 {
                m
            } else if signed {
                (sa.wrapping_div(sb) as u64) & m
            } else {
                ua / ub
            }
        }
        IntOp::Rem => {
            if ub == 0 {
                ua
            } else if signed {
                (sa.wrapping_rem(sb) as u64) & m
            } else {
                ua % ub
            }
        }
        IntOp::Min => {
            if signed {
                (sa.min(sb) as u64) & m
            } else {
                ua.min(ub)
            }
        }
        IntOp::Max => {
            if signed {
                (sa.max(sb) as u64) & m
            } else {
                ua.max(ub)
            }
        }
        IntOp::And => a & b & m,
        IntOp::Or => (a | b) & m,
        IntOp::Xor => (a ^ b) & m,
        IntOp::Shl => {
            let n = b & 0xFFFF_FFFF;
            if n >= u64::from(bits) {
                0
            } else {
                (ua << n) & m
            }
        }
        IntOp::Shr => {
            // Shift amounts past the width clamp (PTX ISA shr: "shift amounts greater than the
            // register width N are clamped to N").
            let n = (b & 0xFFFF_FFFF).min(u64::from(bits));
            if signed {
                if n >= u64::from(bits) {
                    if sa < 0 {
                        m
                    } else {
                        0
                    }
                } else {
                    ((sa >> n) as u64) & m
                }
            } else if n >= u64::from(bits) {
                0
            } else {
                ua >> n
            }
        }
        IntOp::Abs => (sa.wrapping_abs() as u64) & m,
        IntOp::Neg => (sa.wrapping_neg() as u64) & m,
        IntOp::Not => !a & m,
        IntOp::Cnot => u64::from(ua == 0),
        IntOp::Popc => u64::from(ua.count_ones()),
        IntOp::Clz => u64::from(ua.leading_zeros() - (64 - bits)),
        IntOp::Brev => ua.reverse_bits() >> (64 - bits),
        IntOp::Bfind => {
            // Position of the most significant non-sign bit; 0xFFFFFFFF when none.
            let x = if signed && sa < 0 { !ua & m } else { ua };
            if x == 0 {
                0xFFFF_FFFF
            } else {
                u64::from(63 - x.leading_zeros())
            }
        }
        IntOp::BfindShift => {
            // bfind.shiftamt: the left shift that moves the found bit to the msb.
            let x = if signed && sa < 0 { !ua & m } else { ua };
            if x == 0 {
                0xFFFF_FFFF
            } else {
                u64::from(x.leading_zeros() - (64 - bits))
            }
        }
        IntOp::Sad => {
            let diff = if signed {
                (sa - sb).unsigned_abs()
            } else {
                ua.abs_diff(ub)
            };
            diff.wrapping_add(c) & m
        }
    }
}

fn compare(cmp: Cmp, ty: Type, a: u64, b: u64) -> bool {
    match cmp {
        Cmp::Float(fc) => {
            let (x, y) = match ty {
                Type::F32 => (f64::from(f32b(a)), f64::from(f32b(b))),
                Type::F64 => (f64b(a), f64b(b)),
                Type::F16 => (
                    f64::from(nx::f16_to_f32(a as u16)),
                    f64::from(nx::f16_to_f32(b as u16)),
                ),
                _ => (
                    f64::from(nx::bf16_to_f32(a as u16)),
                    f64::from(nx::bf16_to_f32(b as u16)),
                ),
            };
            nx::compare_f64(x, y, fc)
        }
        Cmp::Int(ic) => {
            let bits = ty.bits();
            let ord = if ty.is_signed() {
                sext(a, bits).cmp(&sext(b, bits))
            } else {
                (a & mask(bits)).cmp(&(b & mask(bits)))
            };
            use std::cmp::Ordering::*;
            match ic {
                IntCmp::Eq => ord == Equal,
                IntCmp::Ne => ord != Equal,
                IntCmp::Lt => ord == Less,
                IntCmp::Le => ord != Greater,
                IntCmp::Gt => ord == Greater,
                IntCmp::Ge => ord != Less,
            }
        }
    }
}

fn h16_to_f32(bits: u16, bf16: bool) -> f32 {
    if bf16 {
        nx::bf16_to_f32(bits)
    } else {
        nx::f16_to_f32(bits)
    }
}

fn f32_to_h16(x: f32, bf16: bool) -> u16 {
    if bf16 {
        nx::f32_to_bf16(x, FloatRound::Rn, false, false)
    } else {
        nx::f32_to_f16(x, FloatRound::Rn, false, false)
    }
}

/// Modifiers of a float instruction.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FloatFlags {
    pub approx: bool,
    pub full: bool,
    pub ftz: bool,
    pub sat: bool,
    pub nan: bool,
}

/// Float ops (PTX ISA 9.7.3 "Floating-Point Instructions", 9.7.4 half precision).
#[allow(clippy::too_many_arguments)]
pub(crate) fn float_op(
    op: FloatOp,
    ty: Type,
    [a, b, c]: [u64; 3],
    rnd: Option<FloatRound>,
    flags: FloatFlags,
) -> u64 {
    let FloatFlags {
        approx,
        full,
        ftz,
        sat,
        nan,
    } = flags;
    let r = rnd.unwrap_or(FloatRound::Rn);
    match ty {
        Type::F32 => {
            let (x, y, z) = (f32b(a), f32b(b), f32b(c));
            let v = match op {
                FloatOp::Add => nx::add_f32(x, y, r, ftz, sat),
                FloatOp::Sub => nx::add_f32(x, -y, r, ftz, sat),
                FloatOp::Mul => nx::mul_f32(x, y, r, ftz, sat),
                FloatOp::Fma => nx::fma_f32(x, y, z, r, ftz, sat),
                FloatOp::Div => {
                    let mode = if approx {
                        DivMode::Approx
                    } else if full {
                        DivMode::Full
                    } else {
                        DivMode::Round(r)
                    };
                    nx::div_f32(x, y, mode, ftz)
                }
                FloatOp::Min => nx::min_f32(x, y, ftz, nan),
                FloatOp::Max => nx::max_f32(x, y, ftz, nan),
                FloatOp::Abs => {
                    let v = if ftz { nx::ftz_f32(x) } else { x };
                    f32::from_bits(v.to_bits() & 0x7FFF_FFFF)
                }
                FloatOp::Neg => {
                    let v = if ftz { nx::ftz_f32(x) } else { x };
                    f32::from_bits(v.to_bits() ^ 0x8000_0000)
                }
                FloatOp::Sqrt => nx::sqrt_f32(x, if approx { None } else { Some(r) }, ftz),
                FloatOp::Rcp => nx::rcp_f32(x, if approx { None } else { Some(r) }, ftz),
                FloatOp::Rsqrt => nx::rsqrt_approx_f32(x, ftz),
                FloatOp::Ex2 => nx::ex2_approx_f32(x, ftz),
                FloatOp::Lg2 => nx::lg2_approx_f32(x, ftz),
                FloatOp::Sin => nx::sin_approx_f32(x, ftz),
                FloatOp::Cos => nx::cos_approx_f32(x, ftz),
                FloatOp::Tanh => nx::tanh_approx_f32(x),
                FloatOp::Copysign => nx::copysign_f32(x, y),
            };
            b32f(v)
        }
        Type::F64 => {
            let (x, y, z) = (f64b(a), f64b(b), f64b(c));
            let v = match op {
                FloatOp::Add => nx::add_f64(x, y, r),
                FloatOp::Sub => nx::add_f64(x, -y, r),
                FloatOp::Mul => nx::mul_f64(x, y, r),
                FloatOp::Fma => nx::fma_f64(x, y, z, r),
                FloatOp::Div => nx::div_f64(x, y, r),
                FloatOp::Min => nx::min_f64(x, y),
                FloatOp::Max => nx::max_f64(x, y),
                FloatOp::Abs => x.abs(),
                FloatOp::Neg => -x,
                FloatOp::Sqrt => x.sqrt(),
                FloatOp::Rcp => nx::div_f64(1.0, x, r),
                FloatOp::Copysign => {
                    f64::from_bits((y.to_bits() & !(1 << 63)) | (x.to_bits() & (1 << 63)))
                }
                _ => f64::NAN,
            };
            v.to_bits()
        }
        Type::F16 | Type::Bf16 | Type::F16x2 | Type::Bf16x2 => {
            let bf = matches!(ty, Type::Bf16 | Type::Bf16x2);
            let lanes = if matches!(ty, Type::F16x2 | Type::Bf16x2) {
                2
            } else {
                1
            };
            let mut out = 0u64;
            for l in 0..lanes {
                let sh = 16 * l;
                let x = h16_to_f32((a >> sh) as u16, bf);
                let y = h16_to_f32((b >> sh) as u16, bf);
                let z = h16_to_f32((c >> sh) as u16, bf);
                // The exact result is formed in f64 (products and sums of 16-bit floats are exact
                // there) and rounded once to the 16-bit type via f32 (round-to-odd would be needed
                // for a provably single rounding; the f32 step is exact for add/mul of these
                // inputs except in extreme exponent gaps).
                let v = match op {
                    FloatOp::Add => x + y,
                    FloatOp::Sub => x - y,
                    FloatOp::Mul => x * y,
                    FloatOp::Fma => (f64::from(x).mul_add(f64::from(y), f64::from(z))) as f32,
                    FloatOp::Min => nx::min_f32(x, y, false, nan),
                    FloatOp::Max => nx::max_f32(x, y, false, nan),
                    FloatOp::Abs => x.abs(),
                    FloatOp::Neg => -x,
                    _ => f32::NAN,
                };
                let v = if sat {
                    nx::add_f32(v, 0.0, FloatRound::Rn, false, true)
                } else {
                    v
                };
                let h = if matches!(op, FloatOp::Abs | FloatOp::Neg) {
                    let bits = (a >> sh) as u16;
                    if op == FloatOp::Abs {
                        bits & 0x7FFF
                    } else {
                        bits ^ 0x8000
                    }
                } else {
                    f32_to_h16(v, bf)
                };
                out |= u64::from(h) << sh;
            }
            out
        }
        _ => 0,
    }
}

/// `cvt` (PTX ISA 9.7.9.21).
#[allow(clippy::too_many_arguments)]
pub(crate) fn cvt(
    v: u64,
    dty: Type,
    sty: Type,
    frnd: Option<FloatRound>,
    irnd: Option<nx::IntRound>,
    sat: bool,
    ftz: bool,
    relu: bool,
) -> u64 {
    let sbits = sty.bits();
    let dbits = dty.bits();
    let as_f64 = |v: u64| -> f64 {
        match sty {
            Type::F32 => {
                let x = f32b(v);
                f64::from(if ftz { nx::ftz_f32(x) } else { x })
            }
            Type::F64 => f64b(v),
            Type::F16 => f64::from(nx::f16_to_f32(v as u16)),
            Type::Bf16 => f64::from(nx::bf16_to_f32(v as u16)),
            _ => 0.0,
        }
    };
    let r = frnd.unwrap_or(FloatRound::Rn);
    if sty.is_float() && dty.is_float() {
        let x = as_f64(v);
        let clamp01 = |x: f64| if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
        match dty {
            Type::F64 => {
                let y = match irnd {
                    Some(ir) => nx::round_f64_integral(x, ir),
                    None => x,
                };
                let y = if sat { clamp01(y) } else { y };
                y.to_bits()
            }
            Type::F32 => {
                let y = if sty == Type::F64 {
                    nx::f64_to_f32(x, r)
                } else {
                    x as f32 // exact widening (or identity)
                };
                let y = match irnd {
                    Some(ir) => nx::round_f32_integral(y, ir),
                    None => y,
                };
                let y = if ftz { nx::ftz_f32(y) } else { y };
                let y = if sat { clamp01(f64::from(y)) as f32 } else { y };
                b32f(y)
            }
            Type::F16 | Type::Bf16 => {
                let y32 = if sty == Type::F64 {
                    nx::f64_to_f32(x, FloatRound::Rz) // approximate: see module docs
                } else {
                    x as f32
                };
                let y32 = if sat {
                    clamp01(f64::from(y32)) as f32
                } else {
                    y32
                };
                let h = if dty == Type::Bf16 {
                    nx::f32_to_bf16(y32, r, relu, false)
                } else {
                    nx::f32_to_f16(y32, r, relu, false)
                };
                u64::from(h)
            }
            _ => 0,
        }
    } else if sty.is_float() {
        // float -> int: always saturating, NaN -> 0.
        let x = as_f64(v);
        let ir = irnd.unwrap_or(nx::IntRound::Rzi);
        nx::float_to_int(x, ir, dbits, dty.is_signed())
    } else if dty.is_float() {
        let iv: i128 = if sty.is_signed() {
            i128::from(sext(v, sbits))
        } else {
            i128::from(v & mask(sbits))
        };
        match dty {
            Type::F64 => nx::int_to_f64(iv, r).to_bits(),
            Type::F32 => {
                let y = nx::int_to_f32(iv, r);
                let y = if sat { y.clamp(0.0, 1.0) } else { y };
                b32f(y)
            }
            Type::F16 => u64::from(nx::f32_to_f16(nx::int_to_f32(iv, r), r, false, false)),
            _ => u64::from(nx::f32_to_bf16(nx::int_to_f32(iv, r), r, false, false)),
        }
    } else {
        // int -> int: extend by the source's signedness, truncate, optionally saturate.
        let x: i128 = if sty.is_signed() {
            i128::from(sext(v, sbits))
        } else {
            i128::from(v & mask(sbits))
        };
        if sat {
            let (lo, hi): (i128, i128) = if dty.is_signed() {
                (-(1i128 << (dbits - 1)), (1i128 << (dbits - 1)) - 1)
            } else {
                (0, (1i128 << dbits) - 1)
            };
            (x.clamp(lo, hi) as u64) & mask(dbits)
        } else if dty.is_signed() && dbits < 64 {
            // Keep the register sign-extended like a signed load.
            (sext(x as u64, dbits) as u64) & mask(dbits)
        } else {
            (x as u64) & mask(dbits)
        }
    }
}

fn atom_op(op: AtomOp, ty: Type, old: u64, b: u64, c: u64) -> u64 {
    let bits = ty.bits();
    let m = mask(bits);
    match (op, ty) {
        (AtomOp::Add, Type::F32) => b32f(f32b(old) + f32b(b)),
        (AtomOp::Add, Type::F64) => (f64b(old) + f64b(b)).to_bits(),
        (AtomOp::Add, _) => old.wrapping_add(b) & m,
        (AtomOp::Min, _) => int_op(IntOp::Min, ty, old, b, 0, false),
        (AtomOp::Max, _) => int_op(IntOp::Max, ty, old, b, 0, false),
        (AtomOp::And, _) => old & b & m,
        (AtomOp::Or, _) => (old | b) & m,
        (AtomOp::Xor, _) => (old ^ b) & m,
        (AtomOp::Exch, _) => b & m,
        (AtomOp::Cas, _) => {
            if old & m == b & m {
                c & m
            } else {
                old & m
            }
        }
        // PTX ISA atom: inc: (old >= b) ? 0 : old + 1; dec: (old == 0 || old > b) ? b : old - 1.
        (AtomOp::Inc, _) => {
            if old & m >= b & m {
                0
            } else {
                (old + 1) & m
            }
        }
        (AtomOp::Dec, _) => {
            if old & m == 0 || old & m > b & m {
                b & m
            } else {
                (old - 1) & m
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bfind_and_shiftamt() {
        // PTX ISA bfind: position of the most significant non-sign bit; .shiftamt gives the
        // left shift that brings it to the msb; no such bit -> 0xFFFFFFFF.
        assert_eq!(int_op(IntOp::Bfind, Type::U32, 8, 0, 0, false), 3);
        assert_eq!(int_op(IntOp::BfindShift, Type::U32, 8, 0, 0, false), 28);
        assert_eq!(int_op(IntOp::BfindShift, Type::U64, 1, 0, 0, false), 63);
        assert_eq!(int_op(IntOp::Bfind, Type::U32, 0, 0, 0, false), 0xFFFF_FFFF);
        assert_eq!(
            int_op(IntOp::BfindShift, Type::U32, 0, 0, 0, false),
            0xFFFF_FFFF
        );
        // Signed: -1 has no non-sign bit; -2 (..1110) has bit 0.
        assert_eq!(
            int_op(IntOp::Bfind, Type::S32, 0xFFFF_FFFF, 0, 0, false),
            0xFFFF_FFFF
        );
        assert_eq!(int_op(IntOp::Bfind, Type::S32, 0xFFFF_FFFE, 0, 0, false), 0);
    }
}
