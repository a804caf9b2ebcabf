//! The CPU evaluator: the same graph in f64, the oracle of the generated kernels.

use crate::expr::{gelu_f64, gelu_grad_f64, Bcast, BinOp, CmpOp, Dtype, Expr, Node, UnOp};

/// The evaluator's result for every element of the `[rows, cols]` output.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// The value (f64, not rounded to the output type).
    pub values: Vec<f64>,
    /// The largest magnitude of any intermediate value of that element: the scale of the
    /// rounding errors an f32 evaluation may make (a difference of two large values is exact
    /// only to their size, not the result's).
    pub scale: Vec<f64>,
    /// The number of operations on the longest path from an input to the result.
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
/// the input's dtype (e.g. bf16-rounded).
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
    let mut depth = vec![0usize; nodes.len()];
    for &id in &order {
        depth[id] = match &nodes[id] {
            Node::Input { .. } | Node::Const(_) => 0,
            Node::Unary(_, a) | Node::Cast(_, a) => depth[*a] + 1,
            Node::Binary(_, a, b) | Node::Cmp(_, a, b) => depth[*a].max(depth[*b]) + 1,
            Node::Select(c, a, b) => depth[*c].max(depth[*a]).max(depth[*b]) + 1,
        };
    }
    let n = rows * cols;
    let mut values = Vec::with_capacity(n);
    let mut scale = Vec::with_capacity(n);
    let mut v = vec![0f64; nodes.len()];
    for e in 0..n {
        let (r, c) = (e / cols.max(1), e % cols.max(1));
        let mut mx = 0f64;
        for &id in &order {
            v[id] = match &nodes[id] {
                Node::Input { index, bcast, .. } => {
                    let data = inputs[*index];
                    match bcast {
                        Bcast::Full => data[e],
                        Bcast::Row => data[c],
                        Bcast::Col => data[r],
                        Bcast::Scalar => data[0],
                    }
                }
                Node::Const(bits) => f64::from(f32::from_bits(*bits)),
                Node::Unary(op, a) => unary(*op, v[*a]),
                Node::Binary(op, a, b) => binary(*op, v[*a], v[*b]),
                Node::Cmp(op, a, b) => {
                    let (x, y) = (v[*a], v[*b]);
                    let t = match op {
                        CmpOp::Lt => x < y,
                        CmpOp::Le => x <= y,
                        CmpOp::Gt => x > y,
                        CmpOp::Eq => x == y,
                    };
                    if t {
                        1.0
                    } else {
                        0.0
                    }
                }
                Node::Select(cnd, a, b) => {
                    if v[*cnd] != 0.0 {
                        v[*a]
                    } else {
                        v[*b]
                    }
                }
                Node::Cast(Dtype::F32, a) => v[*a],
                Node::Cast(Dtype::Bf16, a) => half::bf16::from_f64(v[*a]).to_f64(),
            };
            if v[id].is_finite() {
                mx = mx.max(v[id].abs());
            }
        }
        values.push(v[expr.id()]);
        scale.push(mx);
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
    use crate::expr::{gelu, Graph};

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
}
