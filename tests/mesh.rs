//! The dp x pp x tp mesh: the layout arithmetic (tp fastest, then dp, then pp; every kind of
//! group partitions the world) and the groups `Mesh::new` makes on thread ranks, checked by an
//! all-reduce of world ranks inside each group against the layout's member lists.

mod common;

use common::watchdog;
use ferrotron::comm::{launch_with, CommConfig, Communicator, RankCtx, ReduceOp};
use ferrotron::parallel::mesh::{Coords, Layout, Mesh};
use ferrotron::{BackendKind, Error, Tensor};
use std::collections::BTreeSet;
use std::time::Duration;

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (2, 1, 1),
    (1, 2, 1),
    (1, 1, 2),
    (2, 2, 2),
    (1, 2, 4),
    (3, 1, 2),
    (2, 3, 1),
];

#[test]
fn layout_groups_partition_the_world() {
    for &(dp, pp, tp) in SHAPES {
        let l = Layout::new(dp, pp, tp).expect("layout");
        let w = l.world();
        // Coordinates are a bijection, tp fastest.
        let coords: BTreeSet<(usize, usize, usize)> = (0..w)
            .map(|r| {
                let c = l.coords(r);
                assert_eq!(l.rank(c), r);
                (c.pp, c.dp, c.tp)
            })
            .collect();
        assert_eq!(coords.len(), w);
        if w > 1 && tp > 1 {
            assert_eq!(
                l.coords(1),
                Coords {
                    dp: 0,
                    pp: 0,
                    tp: 1
                }
            );
        }
        type GroupFn = fn(&Layout, usize) -> Vec<usize>;
        for (name, size, f) in [
            ("tp", tp, Layout::tp_group as GroupFn),
            ("dp", dp, Layout::dp_group as GroupFn),
            ("pp", pp, Layout::pp_group as GroupFn),
        ] {
            let mut seen = vec![0; w];
            for r in 0..w {
                let g = f(&l, r);
                assert_eq!(g.len(), size, "{name} group of {r}");
                assert!(g.contains(&r), "{name} group of {r} contains it");
                for &m in &g {
                    assert_eq!(f(&l, m), g, "{name} group is the same from every member");
                    seen[m] += 1;
                }
            }
            // Every rank appears in `size` lists (once per member of its own group).
            assert!(seen.iter().all(|&s| s == size), "{name} groups partition");
        }
        // Embedding groups: first and last stage only.
        for r in 0..w {
            let c = l.coords(r);
            match l.embedding_group(r) {
                Some(g) => {
                    assert!(c.pp == 0 || c.pp == pp - 1);
                    assert_eq!(g.len(), if pp > 1 { 2 } else { 1 });
                }
                None => assert!(c.pp > 0 && c.pp < pp - 1),
            }
        }
    }
    assert!(Layout::new(0, 1, 1).is_err());
    assert!(Layout::new(usize::MAX, 2, 2).is_err());
    let d = Layout::new(2, 2, 2).expect("layout").describe();
    assert!(d.contains("tp fastest"), "{d}");
    assert_eq!(d.lines().count(), 2 + 8);
}

fn config() -> CommConfig {
    CommConfig {
        timeout: Duration::from_secs(20),
        deadlock_grace: Duration::from_secs(1),
    }
}

/// The sum of the world ranks in `group`, by an all-reduce over it.
fn sum_of_ranks(ctx: &RankCtx, group: &dyn Communicator) -> ferrotron::Result<f64> {
    let s = ctx.device.new_stream()?;
    let mut t = Tensor::from_slice(&ctx.device, &[ctx.rank as f32], [1])?;
    group.all_reduce(&s, &mut t, ReduceOp::Sum)?.wait()?;
    Ok(t.to_f64_vec(&s)?[0])
}

#[test]
fn mesh_groups_match_the_layout() {
    watchdog(60, "mesh_groups_match_the_layout", || {
        for &(dp, pp, tp) in SHAPES {
            let l = Layout::new(dp, pp, tp).expect("layout");
            launch_with(l.world(), BackendKind::Cpu, config(), |ctx: RankCtx| {
                let mesh = Mesh::new(&ctx.comm, dp, pp, tp)?;
                let c = mesh.coords();
                assert_eq!(c, l.coords(ctx.rank));
                assert_eq!((mesh.tp().rank(), mesh.tp().size()), (c.tp, tp));
                assert_eq!((mesh.dp().rank(), mesh.dp().size()), (c.dp, dp));
                assert_eq!((mesh.pp().rank(), mesh.pp().size()), (c.pp, pp));
                let want = |g: Vec<usize>| g.iter().sum::<usize>() as f64;
                assert_eq!(sum_of_ranks(&ctx, mesh.tp())?, want(l.tp_group(ctx.rank)));
                assert_eq!(sum_of_ranks(&ctx, mesh.dp())?, want(l.dp_group(ctx.rank)));
                assert_eq!(sum_of_ranks(&ctx, mesh.pp())?, want(l.pp_group(ctx.rank)));
                match (mesh.embedding(), l.embedding_group(ctx.rank)) {
                    (Some(e), Some(g)) => assert_eq!(sum_of_ranks(&ctx, e)?, want(g)),
                    (None, None) => {}
                    (e, g) => panic!("rank {}: embedding {:?} vs {g:?}", ctx.rank, e.is_some()),
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("dp {dp} pp {pp} tp {tp}: {e}"));
        }
    });
}

#[test]
fn world_not_equal_to_the_product_is_a_typed_error() {
    watchdog(
        30,
        "world_not_equal_to_the_product_is_a_typed_error",
        || {
            let r = launch_with(
                4,
                BackendKind::Cpu,
                config(),
                |ctx: RankCtx| match Mesh::new(&ctx.comm, 2, 2, 2) {
                    Err(Error::InvalidArgument { what, why, .. }) => {
                        assert_eq!(what, "world");
                        assert!(why.contains("dp 2 x pp 2 x tp 2 = 8"), "{why}");
                        Ok(())
                    }
                    Err(e) => panic!("wrong error {e}"),
                    Ok(_) => panic!("accepted a mesh of 8 on 4 ranks"),
                },
            );
            r.expect("every rank got the typed error");
        },
    );
}
