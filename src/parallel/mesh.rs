//! The 3-D mesh: `world = dp * pp * tp` ranks laid out the way Megatron lays them out — tensor
//! parallel fastest (a tp group is consecutive ranks, i.e. GPUs of one node), then data
//! parallel, then pipeline parallel:
//!
//! `rank = pp_rank * (dp * tp) + dp_rank * tp + tp_rank`.
//!
//! [`Layout`] is the pure arithmetic (who is in which group); [`Mesh`] makes the groups on a
//! world communicator with `split`, one call per kind of group, in a fixed order on every rank.
//! The embedding group joins the first and last pipeline stage of each (dp, tp) position, for
//! the gradient all-reduce of weights tied between the embedding and the LM head.

use std::fmt::Write as _;

use crate::comm::Communicator;
use crate::error::{Error, Result};

/// A rank's coordinates in the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Coords {
    /// Data-parallel rank.
    pub dp: usize,
    /// Pipeline-parallel rank (stage).
    pub pp: usize,
    /// Tensor-parallel rank.
    pub tp: usize,
}

/// The mesh arithmetic: sizes, coordinates and group membership, no communicators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    /// Data-parallel size.
    pub dp: usize,
    /// Pipeline-parallel size.
    pub pp: usize,
    /// Tensor-parallel size.
    pub tp: usize,
}

impl Layout {
    /// A layout of `dp * pp * tp` ranks.
    ///
    /// Errors: [`Error::InvalidArgument`] for a zero size or a product that overflows.
    pub fn new(dp: usize, pp: usize, tp: usize) -> Result<Layout> {
        for (what, v) in [("dp", dp), ("pp", pp), ("tp", tp)] {
            if v == 0 {
                return Err(Error::invalid("Layout::new", what, "must be at least 1"));
            }
        }
        dp.checked_mul(pp)
            .and_then(|x| x.checked_mul(tp))
            .ok_or_else(|| Error::invalid("Layout::new", "dp * pp * tp", "overflows"))?;
        Ok(Layout { dp, pp, tp })
    }

    /// The number of ranks, `dp * pp * tp`.
    pub fn world(&self) -> usize {
        self.dp * self.pp * self.tp
    }

    /// The coordinates of `rank` (which must be `< world()`).
    pub fn coords(&self, rank: usize) -> Coords {
        Coords {
            tp: rank % self.tp,
            dp: (rank / self.tp) % self.dp,
            pp: rank / (self.tp * self.dp),
        }
    }

    /// The rank at `c`.
    pub fn rank(&self, c: Coords) -> usize {
        c.pp * self.dp * self.tp + c.dp * self.tp + c.tp
    }

    /// The tp group of `rank`: same dp and pp, every tp rank, in tp order.
    pub fn tp_group(&self, rank: usize) -> Vec<usize> {
        let c = self.coords(rank);
        (0..self.tp)
            .map(|tp| self.rank(Coords { tp, ..c }))
            .collect()
    }

    /// The dp group of `rank`: same pp and tp, every dp rank, in dp order.
    pub fn dp_group(&self, rank: usize) -> Vec<usize> {
        let c = self.coords(rank);
        (0..self.dp)
            .map(|dp| self.rank(Coords { dp, ..c }))
            .collect()
    }

    /// The pp group of `rank`: same dp and tp, every stage, in stage order.
    pub fn pp_group(&self, rank: usize) -> Vec<usize> {
        let c = self.coords(rank);
        (0..self.pp)
            .map(|pp| self.rank(Coords { pp, ..c }))
            .collect()
    }

    /// The embedding group of `rank` (first and last stage of its pp group; one rank when
    /// `pp == 1`), or `None` for a rank on a middle stage.
    pub fn embedding_group(&self, rank: usize) -> Option<Vec<usize>> {
        let c = self.coords(rank);
        if c.pp != 0 && c.pp != self.pp - 1 {
            return None;
        }
        let mut g = vec![self.rank(Coords { pp: 0, ..c })];
        if self.pp > 1 {
            g.push(self.rank(Coords {
                pp: self.pp - 1,
                ..c
            }));
        }
        Some(g)
    }

    /// A table of every rank's coordinates and groups (what `ferrotron mesh` prints).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# mesh dp={} pp={} tp={}: {} ranks, rank = pp*{} + dp*{} + tp (tp fastest, then dp, then pp)",
            self.dp,
            self.pp,
            self.tp,
            self.world(),
            self.dp * self.tp,
            self.tp
        );
        let _ = writeln!(
            s,
            "{:>5} {:>4} {:>4} {:>4}  {:<16} {:<16} {:<16} {:<10}",
            "rank", "dp", "pp", "tp", "tp group", "dp group", "pp group", "embedding"
        );
        let list = |g: &[usize]| {
            g.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        for r in 0..self.world() {
            let c = self.coords(r);
            let emb = self
                .embedding_group(r)
                .map_or_else(|| "-".to_string(), |g| list(&g));
            let _ = writeln!(
                s,
                "{:>5} {:>4} {:>4} {:>4}  {:<16} {:<16} {:<16} {:<10}",
                r,
                c.dp,
                c.pp,
                c.tp,
                format!("[{}]", list(&self.tp_group(r))),
                format!("[{}]", list(&self.dp_group(r))),
                format!("[{}]", list(&self.pp_group(r))),
                emb
            );
        }
        s
    }
}

/// A rank's groups, owned (from [`Mesh::into_groups`]).
pub struct MeshGroups {
    /// The tensor-parallel group.
    pub tp: Box<dyn Communicator>,
    /// The data-parallel group.
    pub dp: Box<dyn Communicator>,
    /// The pipeline-parallel group.
    pub pp: Box<dyn Communicator>,
    /// The embedding group (first and last stage), `None` on middle stages.
    pub embedding: Option<Box<dyn Communicator>>,
}

/// A rank's view of the mesh: its coordinates and its four groups.
pub struct Mesh {
    layout: Layout,
    rank: usize,
    tp: Box<dyn Communicator>,
    dp: Box<dyn Communicator>,
    pp: Box<dyn Communicator>,
    embedding: Option<Box<dyn Communicator>>,
}

impl Mesh {
    /// Splits `world` into the mesh's groups. Collective over `world`: every rank calls it with
    /// the same sizes.
    ///
    /// Errors: [`Error::InvalidArgument`] when `world.size() != dp * pp * tp` (naming both) or a
    /// size is zero; whatever `split` reports.
    pub fn new(world: &dyn Communicator, dp: usize, pp: usize, tp: usize) -> Result<Mesh> {
        const OP: &str = "Mesh::new";
        let layout = Layout::new(dp, pp, tp)?;
        if world.size() != layout.world() {
            return Err(Error::invalid(
                OP,
                "world",
                format!(
                    "{} has {} ranks, but dp {dp} x pp {pp} x tp {tp} = {}",
                    world.name(),
                    world.size(),
                    layout.world()
                ),
            ));
        }
        let rank = world.rank();
        let c = layout.coords(rank);
        let color =
            |x: usize| u32::try_from(x).map_err(|_| Error::invalid(OP, "world", "too many groups"));
        let need = |g: Option<Box<dyn Communicator>>, what: &str| {
            g.ok_or_else(|| Error::invalid(OP, what, "split left this rank out"))
        };
        // One split per kind of group, in this order on every rank; the key orders members by
        // their coordinate along the group.
        let tp_c = need(
            world.split(Some(color(c.pp * dp + c.dp)?), c.tp)?,
            "tp group",
        )?;
        let dp_c = need(
            world.split(Some(color(c.pp * tp + c.tp)?), c.dp)?,
            "dp group",
        )?;
        let pp_c = need(
            world.split(Some(color(c.dp * tp + c.tp)?), c.pp)?,
            "pp group",
        )?;
        let emb_color = match layout.embedding_group(rank) {
            Some(_) => Some(color(c.dp * tp + c.tp)?),
            None => None,
        };
        let embedding = world.split(emb_color, c.pp)?;
        Ok(Mesh {
            layout,
            rank,
            tp: tp_c,
            dp: dp_c,
            pp: pp_c,
            embedding,
        })
    }

    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// This rank in the world.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// This rank's coordinates.
    pub fn coords(&self) -> Coords {
        self.layout.coords(self.rank)
    }

    /// The tensor-parallel group.
    pub fn tp(&self) -> &dyn Communicator {
        &*self.tp
    }

    /// The data-parallel group.
    pub fn dp(&self) -> &dyn Communicator {
        &*self.dp
    }

    /// The pipeline-parallel group.
    pub fn pp(&self) -> &dyn Communicator {
        &*self.pp
    }

    /// The embedding group (first and last stage), `None` on middle stages.
    pub fn embedding(&self) -> Option<&dyn Communicator> {
        self.embedding.as_deref()
    }

    /// Gives up the groups (e.g. to move the tp group into a layer that owns it).
    pub fn into_groups(self) -> MeshGroups {
        MeshGroups {
            tp: self.tp,
            dp: self.dp,
            pp: self.pp,
            embedding: self.embedding,
        }
    }
}
