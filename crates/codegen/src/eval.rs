//! The CPU evaluator: the same graph in f64, the oracle of the generated kernels.

use crate::expr::{gelu_f64, gelu_grad_f64, Bcast, BinOp, CmpOp, Dtype, Expr, Node, RedOp, UnOp};

/// The evaluator's result for every element of the output: `rows * cols` values, or `rows`
/// for a per-row expression ([`Expr::per_row`]).
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// The value (f64, not rounded to the output type).
    pub values: Vec<f64>,
    /// The largest magnitude of any intermediate value of that element: the scale of the
    /// rounding errors an f32 evaluation may make (a difference of two large values is exact
    /// only to their size, not the result's). A reduction's value depends on its whole row, so
    /// it carries the largest scale of its operand over the row, and a `sum` also the sum of
    /// its terms' magnitudes (`mean`: divided by `cols`), which bounds every partial sum.
    pub scale: Vec<f64>,
    /// The number of operations on the longest path from an input to the result; a `sum` or
    /// `mean` counts 1 plus the roundings on the longest path through the kernel's fixed
    /// summation tree ([`crate::emit::sum_rounding_steps`]: about `log2(cols)`), so its error,
    /// at most that many roundings of partial sums bounded by the sum of the terms' magnitudes,
    /// stays within `run::tolerance`'s `16 depth u scale`; a `max` counts 1 (it does not
    /// round).
    pub depth: usize,
}

/// Why an evaluation could not run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EvalError {
    /// `inputs` does not have one slice per graph input.
    InputCount {
        /// Inputs the graph declares.
        expected: usize,
        /// Slices given.
        got: usize,
    },
    /// An input slice has the wrong length for its broadcast.
    InputLength {
        /// The input's name.
        name: String,
        /// The length its broadcast needs.
        expected: usize,
        /// The length given.
        got: usize,
    },
}

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalError::InputCount { expected, got } => {
                write!(f, "the graph has {expected} inputs, {got} given")
            }
            EvalError::InputLength {
                name,
                expected,
                got,
            } => write!(f, "input {name} needs {expected} values, {got} given"),
        }
    }
}

impl std::error::Error for EvalError {}

fn unary(op: UnOp, a: f64) -> f64 {
    match op {
        UnOp::Neg => -a,
        UnOp::Abs => a.abs(),
        UnOp::Exp => a.exp(),
        UnOp::Log => a.ln(),
        UnOp::Tanh => a.tanh(),
        UnOp::Erf => libm::erf(a),
        UnOp::Sqrt => a.sqrt(),
        UnOp::Rsqrt => 1.0 / a.sqrt(),
        UnOp::Gelu => gelu_f64(a),
        UnOp::GeluGrad => gelu_grad_f64(a),
    }
}

fn binary(op: BinOp, a: f64, b: f64) -> f64 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        BinOp::Max if a.is_nan() || b.is_nan() => f64::NAN,
        BinOp::Min if a.is_nan() || b.is_nan() => f64::NAN,
        BinOp::Max => a.max(b),
        BinOp::Min => a.min(b),
    }
}

/// Evaluates `expr` over a `[rows, cols]` output. `inputs[i]` holds input `i`'s values (in
/// declaration order): `rows * cols` for [`Bcast::Full`], `cols` for [`Bcast::Row`], `rows` for
/// [`Bcast::Col`], 1 for [`Bcast::Scalar`]; the caller passes values already representable in
/// the input's dtype (e.g. bf16-rounded). A per-row expression ([`Expr::per_row`]) gives `rows`
/// values, any other `rows * cols` (row-major).
///
/// # Errors
/// [`EvalError`] when the inputs do not match the graph.
pub fn evaluate(
    expr: &Expr,
    rows: usize,
    cols: usize,
    inputs: &[&[f64]],
) -> Result<Evaluation, EvalError> {
    let g = expr.graph();
    let nodes = g.nodes();
    let declared = g.inputs();
    if declared.len() != inputs.len() {
        return Err(EvalError::InputCount {
            expected: declared.len(),
            got: inputs.len(),
        });
    }
    for &id in &declared {
        if let Node::Input {
            index, name, bcast, ..
        } = &nodes[id]
        {
            let need = match bcast {
                Bcast::Full => rows * cols,
                Bcast::Row => cols,
                Bcast::Col => rows,
                Bcast::Scalar => 1,
            };
            if inputs[*index].len() != need {
                return Err(EvalError::InputLength {
                    name: name.clone(),
                    expected: need,
                    got: inputs[*index].len(),
                });
            }
        }
    }
    let order = expr.reachable();
    let sum_steps = crate::emit::sum_rounding_steps(cols);
    let mut depth = vec![0usize; nodes.len()];
    for &id in &order {
        depth[id] = match &nodes[id] {
            Node::Input { .. } | Node::Const(_) => 0,
            Node::Unary(_, a) | Node::Cast(_, a) => depth[*a] + 1,
            Node::Binary(_, a, b) | Node::Cmp(_, a, b) => depth[*a].max(depth[*b]) + 1,
            Node::Select(c, a, b) => depth[*c].max(depth[*a]).max(depth[*b]) + 1,
            Node::Reduce(RedOp::Max, a) => depth[*a] + 1,
            Node::Reduce(RedOp::Sum | RedOp::Mean, a) => depth[*a] + 1 + sum_steps,
        };
    }
    // Row by row, every node over the whole row (a reduction needs its operand's row), with the
    // largest intermediate magnitude of each node's subtree per column. An empty row (cols = 0)
    // still gets one column, so per-row values exist; its full and row inputs are NaN, and the
    // reductions see no terms.
    let per_row = expr.per_row();
    let width = cols.max(1);
    let mut v = vec![vec![0f64; width]; nodes.len()];
    let mut sc = vec![vec![0f64; width]; nodes.len()];
    let out_len = if per_row { rows } else { rows * cols };
    let mut values = Vec::with_capacity(out_len);
    let mut scale = Vec::with_capacity(out_len);
    for r in 0..rows {
        for &id in &order {
            let mut val = std::mem::take(&mut v[id]);
            let mut s = std::mem::take(&mut sc[id]);
            for c in 0..width {
                let (x, operand_scale) = match &nodes[id] {
                    Node::Reduce(..) => break,
                    Node::Input { index, bcast, .. } => {
                        let data = inputs[*index];
                        let x = match bcast {
                            _ if cols == 0 && matches!(bcast, Bcast::Full | Bcast::Row) => f64::NAN,
                            Bcast::Full => data[r * cols + c],
                            Bcast::Row => data[c],
                            Bcast::Col => data[r],
                            Bcast::Scalar => data[0],
                        };
                        (x, 0.0)
                    }
                    Node::Const(bits) => (f64::from(f32::from_bits(*bits)), 0.0),
                    Node::Unary(op, a) => (unary(*op, v[*a][c]), sc[*a][c]),
                    Node::Binary(op, a, b) => {
                        (binary(*op, v[*a][c], v[*b][c]), sc[*a][c].max(sc[*b][c]))
                    }
                    Node::Cmp(op, a, b) => {
                        let (x, y) = (v[*a][c], v[*b][c]);
                        let t = match op {
                            CmpOp::Lt => x < y,
                            CmpOp::Le => x <= y,
                            CmpOp::Gt => x > y,
                            CmpOp::Eq => x == y,
                        };
                        (if t { 1.0 } else { 0.0 }, sc[*a][c].max(sc[*b][c]))
                    }
                    Node::Select(cnd, a, b) => (
                        if v[*cnd][c] != 0.0 {
                            v[*a][c]
                        } else {
                            v[*b][c]
                        },
                        sc[*cnd][c].max(sc[*a][c]).max(sc[*b][c]),
                    ),
                    Node::Cast(Dtype::F32, a) => (v[*a][c], sc[*a][c]),
                    Node::Cast(Dtype::Bf16, a) => {
                        (half::bf16::from_f64(v[*a][c]).to_f64(), sc[*a][c])
                    }
                };
                val[c] = x;
                s[c] = if x.is_finite() {
                    operand_scale.max(x.abs())
                } else {
                    operand_scale
                };
            }
            if let Node::Reduce(op, a) = &nodes[id] {
                let terms = &v[*a][..cols];
                let x = match op {
                    RedOp::Sum => terms.iter().sum(),
                    RedOp::Mean => terms.iter().sum::<f64>() / cols as f64,
                    RedOp::Max => terms
                        .iter()
                        .fold(f64::NEG_INFINITY, |m, &t| binary(BinOp::Max, m, t)),
                };
                let magnitude: f64 = terms
                    .iter()
                    .filter(|t| t.is_finite())
                    .map(|t| t.abs())
                    .sum();
                let mut s_row = sc[*a][..cols].iter().fold(0f64, |m, &t| m.max(t));
                match op {
                    RedOp::Sum => s_row = s_row.max(magnitude),
                    RedOp::Mean => s_row = s_row.max(magnitude / cols as f64),
                    RedOp::Max => {}
                }
                if x.is_finite() {
                    s_row = s_row.max(x.abs());
                }
                val.fill(x);
                s.fill(s_row);
            }
            v[id] = val;
            sc[id] = s;
        }
        if per_row {
            values.push(v[expr.id()][0]);
            scale.push(sc[expr.id()][0]);
        } else {
            values.extend_from_slice(&v[expr.id()][..cols]);
            scale.extend_from_slice(&sc[expr.id()][..cols]);
        }
    }
    Ok(Evaluation {
        values,
        scale,
        depth: depth[expr.id()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{gelu, max, mean, sum, Graph};

    #[test]
    fn broadcasting_and_values() {
        let g = Graph::new();
        let x = g.input("x", Dtype::F32, Bcast::Full);
        let b = g.input("b", Dtype::F32, Bcast::Row);
        let s = g.input("s", Dtype::F32, Bcast::Col);
        let k = g.input("k", Dtype::F32, Bcast::Scalar);
        let y = (&x + &b) * &s - &k;
        let e = evaluate(
            &y,
            2,
            3,
            &[
                &[1., 2., 3., 4., 5., 6.],
                &[10., 20., 30.],
                &[1., 2.],
                &[0.5],
            ],
        )
        .expect("eval");
        assert_eq!(e.values, vec![10.5, 21.5, 32.5, 27.5, 49.5, 71.5]);
        assert_eq!(e.depth, 3);
        let z = gelu(x.clone());
        let e = evaluate(&z, 1, 1, &[&[1.0], &[0.0; 1], &[0.0], &[0.0]]).expect("eval");
        assert!(
            (e.values[0] - 0.841_191_990_607_2).abs() < 1e-9,
            "{}",
            e.values[0]
        );
        assert!(matches!(
            evaluate(&z, 1, 1, &[&[1.0]]),
            Err(EvalError::InputCount { .. })
        ));
        assert!(matches!(
            evaluate(&y, 2, 3, &[&[1.0], &[0.0; 3], &[0.0; 2], &[0.0]]),
            Err(EvalError::InputLength { .. })
        ));
    }

    #[test]
    fn reductions_are_per_row() {
        let g = Graph::new();
        let x = g.input("x", Dtype::F32, Bcast::Full);
        let xs = [1.0, -2.0, 3.0, 4.0, 5.0, -6.0];
        let e = (&x - &max(&x)).exp();
        let softmax = &e / &sum(&e);
        let v = evaluate(&softmax, 2, 3, &[&xs]).expect("eval");
        assert_eq!(v.values.len(), 6);
        let row0: f64 = v.values[..3].iter().sum();
        assert!((row0 - 1.0).abs() < 1e-12);
        let want = (1.0f64 - 3.0).exp() / ((-2.0f64).exp() + (-5.0f64).exp() + 1.0);
        assert!((v.values[0] - want).abs() < 1e-12);
        // Depths: max 1, sub 2, exp 3, the sum 3 + 1 + 2 (the kernel's tree over 3 terms has
        // 2 levels), div 7.
        assert_eq!(v.depth, 7);
        // Per-row: one value per row; scale holds the sum of the magnitudes.
        let s = sum(&x);
        let v = evaluate(&s, 2, 3, &[&xs]).expect("eval");
        assert_eq!(v.values, vec![2.0, 3.0]);
        assert_eq!(v.scale, vec![6.0, 15.0]);
        let m = mean(&(&x - &mean(&x)));
        let v = evaluate(&m, 2, 3, &[&xs]).expect("eval");
        assert!(v.values.iter().all(|m| m.abs() < 1e-15));
        assert_eq!(v.scale[0], 3.0, "|x| is the largest intermediate");
        // Empty rows: sum 0, max -inf, mean NaN (0 / 0).
        let empty: [f64; 0] = [];
        let v = evaluate(&sum(&x), 2, 0, &[&empty]).expect("eval");
        assert_eq!(v.values, vec![0.0, 0.0]);
        let v = evaluate(&max(&x), 2, 0, &[&empty]).expect("eval");
        assert_eq!(v.values, vec![f64::NEG_INFINITY; 2]);
        assert!(evaluate(&mean(&x), 1, 0, &[&empty]).expect("eval").values[0].is_nan());
        // A NaN term makes the max NaN.
        let v = evaluate(&max(&x), 1, 2, &[&[1.0, f64::NAN]]).expect("eval");
        assert!(v.values[0].is_nan());
    }
}
