//! The expression IR: a DAG of typed nodes in a [`Graph`], built through [`Expr`] handles with
//! the usual operators (`&x + &b`, `gelu(y) * &s`).
//!
//! Every value is an f32 computation at run time (bf16 inputs widen exactly); [`Expr::cast`]
//! rounds to a narrower type and back (what storing an intermediate in bf16 would do). Nodes are
//! hash-consed: building the same operation on the same operands twice returns the same node,
//! and an operation whose operands are all constants is folded to a constant at once (in f32,
//! as the kernel would compute it).
//!
//! Reductions along the last dim ([`sum`], [`max`], [`mean`]) give each row one value, which
//! behaves like a [`Bcast::Col`] input in the rest of the expression (`exp(x - max(x))`). An
//! expression that contains a reduction and reads no [`Bcast::Full`] or [`Bcast::Row`] input
//! outside one is *per-row* ([`Expr::per_row`]): its kernel writes one value per row.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::ops::{Add, Div, Mul, Neg, Sub};
use std::rc::Rc;

/// Element types of inputs, casts and outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dtype {
    /// IEEE single.
    F32,
    /// bfloat16 (8 significant bits).
    Bf16,
}

impl Dtype {
    /// The CUDA C element type.
    pub fn c_type(self) -> &'static str {
        match self {
            Dtype::F32 => "float",
            Dtype::Bf16 => "__nv_bfloat16",
        }
    }

    /// Rounds an f32 value to this type (round to nearest even) and back.
    pub fn round(self, v: f32) -> f32 {
        match self {
            Dtype::F32 => v,
            Dtype::Bf16 => half::bf16::from_f32(v).to_f32(),
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }
}

/// How an input covers the `[rows, cols]` output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bcast {
    /// A full `[rows, cols]` tensor.
    Full,
    /// A `[cols]` vector repeated over rows (a bias).
    Row,
    /// A `[rows]` vector repeated over columns (a per-row statistic).
    Col,
    /// One value: a kernel parameter (f32).
    Scalar,
}

/// Unary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnOp {
    /// `-x`.
    Neg,
    /// `|x|`.
    Abs,
    /// `e^x`.
    Exp,
    /// Natural log.
    Log,
    /// `tanh x`.
    Tanh,
    /// The error function.
    Erf,
    /// `sqrt x`.
    Sqrt,
    /// `1 / sqrt x`.
    Rsqrt,
    /// Megatron's tanh-approximated GeLU.
    Gelu,
    /// Its derivative.
    GeluGrad,
}

/// Binary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BinOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// `max(a, b)` (NaN if either is NaN).
    Max,
    /// `min(a, b)` (NaN if either is NaN).
    Min,
}

/// Comparisons (1.0 when true, 0.0 when false).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CmpOp {
    /// `a < b`.
    Lt,
    /// `a <= b`.
    Le,
    /// `a > b`.
    Gt,
    /// `a == b`.
    Eq,
}

/// Reductions along the last dim (over the `cols` elements of a row).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RedOp {
    /// The sum (0 for an empty row).
    Sum,
    /// The largest element (NaN if any is NaN; -inf for an empty row).
    Max,
    /// The sum divided by `cols` (NaN for an empty row).
    Mean,
}

/// The index of a node in its [`Graph`].
pub type NodeId = usize;

/// One node. Constants hold their f32 bits (so nodes hash and compare exactly).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// Input number `index` (in order of declaration).
    Input {
        /// Position among the inputs.
        index: usize,
        /// Name (for the kernel's parameter list).
        name: String,
        /// Element type.
        dtype: Dtype,
        /// Broadcast.
        bcast: Bcast,
    },
    /// An f32 constant (bits).
    Const(u32),
    /// `op(a)`.
    Unary(UnOp, NodeId),
    /// `op(a, b)`.
    Binary(BinOp, NodeId, NodeId),
    /// `op(a, b)` as 1.0 / 0.0.
    Cmp(CmpOp, NodeId, NodeId),
    /// `c != 0 ? a : b`.
    Select(NodeId, NodeId, NodeId),
    /// Round to a type and back.
    Cast(Dtype, NodeId),
    /// `op` over the row of `a`: one value per row.
    Reduce(RedOp, NodeId),
}

#[derive(Default)]
struct GraphData {
    nodes: Vec<Node>,
    index: HashMap<Node, NodeId>,
    inputs: Vec<NodeId>,
}

/// An expression graph. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Graph(Rc<RefCell<GraphData>>);

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Graph({} nodes)", self.0.borrow().nodes.len())
    }
}

/// A value in a graph: a handle to one node.
#[derive(Clone)]
pub struct Expr {
    graph: Graph,
    id: NodeId,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.canonical())
    }
}

/// The f32 result of a unary operation (the kernel's math, for constant folding).
pub fn apply_unary(op: UnOp, a: f32) -> f32 {
    match op {
        UnOp::Neg => -a,
        UnOp::Abs => a.abs(),
        UnOp::Exp => a.exp(),
        UnOp::Log => a.ln(),
        UnOp::Tanh => a.tanh(),
        UnOp::Erf => libm::erff(a),
        UnOp::Sqrt => a.sqrt(),
        UnOp::Rsqrt => 1.0 / a.sqrt(),
        UnOp::Gelu => gelu_f64(f64::from(a)) as f32,
        UnOp::GeluGrad => gelu_grad_f64(f64::from(a)) as f32,
    }
}

/// The f32 result of a binary operation.
pub fn apply_binary(op: BinOp, a: f32, b: f32) -> f32 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        BinOp::Max => {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.max(b)
            }
        }
        BinOp::Min => {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.min(b)
            }
        }
    }
}

/// Megatron's GeLU, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, in f64.
pub fn gelu_f64(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
}

/// The derivative of [`gelu_f64`].
pub fn gelu_grad_f64(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let t = (k * (x + 0.044715 * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    fn intern(&self, node: Node) -> NodeId {
        let mut d = self.0.borrow_mut();
        if let Some(&id) = d.index.get(&node) {
            return id;
        }
        let id = d.nodes.len();
        d.nodes.push(node.clone());
        d.index.insert(node, id);
        id
    }

    fn expr(&self, id: NodeId) -> Expr {
        Expr {
            graph: self.clone(),
            id,
        }
    }

    /// Declares the next input. Scalars are f32 kernel parameters whatever `dtype` says.
    pub fn input(&self, name: &str, dtype: Dtype, bcast: Bcast) -> Expr {
        let index = self.0.borrow().inputs.len();
        let dtype = if bcast == Bcast::Scalar {
            Dtype::F32
        } else {
            dtype
        };
        let id = self.intern(Node::Input {
            index,
            name: name.to_string(),
            dtype,
            bcast,
        });
        let mut d = self.0.borrow_mut();
        if !d.inputs.contains(&id) {
            d.inputs.push(id);
        }
        drop(d);
        self.expr(id)
    }

    /// A constant (rounded to f32).
    pub fn constant(&self, v: f64) -> Expr {
        self.expr(self.intern(Node::Const((v as f32).to_bits())))
    }

    /// The nodes, in creation order (operands before their users).
    pub fn nodes(&self) -> Vec<Node> {
        self.0.borrow().nodes.clone()
    }

    /// The input nodes, in declaration order.
    pub fn inputs(&self) -> Vec<NodeId> {
        self.0.borrow().inputs.clone()
    }

    fn node(&self, id: NodeId) -> Node {
        self.0.borrow().nodes[id].clone()
    }

    fn constant_of(&self, id: NodeId) -> Option<f32> {
        match self.node(id) {
            Node::Const(bits) => Some(f32::from_bits(bits)),
            _ => None,
        }
    }

    /// Per node: whether its value varies along a row (it reads a [`Bcast::Full`] or
    /// [`Bcast::Row`] input outside a reduction), and whether it contains a reduction.
    pub fn row_structure(&self) -> (Vec<bool>, Vec<bool>) {
        let nodes = self.nodes();
        let (mut varies, mut reduces) = (vec![false; nodes.len()], vec![false; nodes.len()]);
        // Operands come before their users (ids grow as nodes are created).
        for (id, node) in nodes.iter().enumerate() {
            let (v, r) = match node {
                Node::Input { bcast, .. } => (matches!(bcast, Bcast::Full | Bcast::Row), false),
                Node::Const(_) => (false, false),
                Node::Reduce(..) => (false, true),
                Node::Unary(_, a) | Node::Cast(_, a) => (varies[*a], reduces[*a]),
                Node::Binary(_, a, b) | Node::Cmp(_, a, b) => {
                    (varies[*a] || varies[*b], reduces[*a] || reduces[*b])
                }
                Node::Select(c, a, b) => (
                    varies[*c] || varies[*a] || varies[*b],
                    reduces[*c] || reduces[*a] || reduces[*b],
                ),
            };
            varies[id] = v;
            reduces[id] = r;
        }
        (varies, reduces)
    }

    fn reduce(&self, op: RedOp, a: NodeId) -> Expr {
        // The max or mean of a value that is already one per row (and keeps its kernel per-row:
        // it contains a reduction) is that value. Reductions of constants and of reduction-free
        // per-row values stay, so the expression stays per-row (and `sum` depends on `cols`).
        if matches!(op, RedOp::Max | RedOp::Mean) {
            let (varies, reduces) = self.row_structure();
            if !varies[a] && reduces[a] {
                return self.expr(a);
            }
        }
        self.expr(self.intern(Node::Reduce(op, a)))
    }

    fn unary(&self, op: UnOp, a: NodeId) -> Expr {
        if let Some(x) = self.constant_of(a) {
            return self.constant(f64::from(apply_unary(op, x)));
        }
        self.expr(self.intern(Node::Unary(op, a)))
    }

    fn binary(&self, op: BinOp, a: NodeId, b: NodeId) -> Expr {
        if let (Some(x), Some(y)) = (self.constant_of(a), self.constant_of(b)) {
            return self.constant(f64::from(apply_binary(op, x, y)));
        }
        // Exact identities only (x * 1, x / 1): anything else could change a NaN, an infinity
        // or the sign of a zero.
        if let (BinOp::Mul | BinOp::Div, Some(1.0)) = (op, self.constant_of(b)) {
            return self.expr(a);
        }
        if op == BinOp::Mul && self.constant_of(a) == Some(1.0) {
            return self.expr(b);
        }
        // Commutative operations: a canonical operand order, so `a + b` and `b + a` are one node.
        let (a, b) = match op {
            BinOp::Add | BinOp::Mul | BinOp::Max | BinOp::Min if a > b => (b, a),
            _ => (a, b),
        };
        self.expr(self.intern(Node::Binary(op, a, b)))
    }
}

fn same_graph(a: &Expr, b: &Expr) {
    assert!(
        Rc::ptr_eq(&a.graph.0, &b.graph.0),
        "expressions from different graphs cannot be combined"
    );
}

impl Expr {
    /// The node.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    fn un(&self, op: UnOp) -> Expr {
        self.graph.unary(op, self.id)
    }

    fn bin(&self, op: BinOp, other: &Expr) -> Expr {
        same_graph(self, other);
        self.graph.binary(op, self.id, other.id)
    }

    /// `e^self`.
    pub fn exp(&self) -> Expr {
        self.un(UnOp::Exp)
    }
    /// `ln self`.
    pub fn log(&self) -> Expr {
        self.un(UnOp::Log)
    }
    /// `tanh self`.
    pub fn tanh(&self) -> Expr {
        self.un(UnOp::Tanh)
    }
    /// `erf self`.
    pub fn erf(&self) -> Expr {
        self.un(UnOp::Erf)
    }
    /// `sqrt self`.
    pub fn sqrt(&self) -> Expr {
        self.un(UnOp::Sqrt)
    }
    /// `1 / sqrt self`.
    pub fn rsqrt(&self) -> Expr {
        self.un(UnOp::Rsqrt)
    }
    /// `|self|`.
    pub fn abs(&self) -> Expr {
        self.un(UnOp::Abs)
    }
    /// `max(self, other)`.
    pub fn max(&self, other: &Expr) -> Expr {
        self.bin(BinOp::Max, other)
    }
    /// `min(self, other)`.
    pub fn min(&self, other: &Expr) -> Expr {
        self.bin(BinOp::Min, other)
    }
    /// `self op other` as 1.0 / 0.0.
    pub fn cmp(&self, op: CmpOp, other: &Expr) -> Expr {
        same_graph(self, other);
        let g = &self.graph;
        if let (Some(a), Some(b)) = (g.constant_of(self.id), g.constant_of(other.id)) {
            let t = match op {
                CmpOp::Lt => a < b,
                CmpOp::Le => a <= b,
                CmpOp::Gt => a > b,
                CmpOp::Eq => a == b,
            };
            return g.constant(if t { 1.0 } else { 0.0 });
        }
        g.expr(g.intern(Node::Cmp(op, self.id, other.id)))
    }
    /// `self != 0 ? a : b`.
    pub fn select(&self, a: &Expr, b: &Expr) -> Expr {
        same_graph(self, a);
        same_graph(self, b);
        let g = &self.graph;
        if let Some(c) = g.constant_of(self.id) {
            return if c != 0.0 { a.clone() } else { b.clone() };
        }
        g.expr(g.intern(Node::Select(self.id, a.id, b.id)))
    }
    /// Rounds to `dtype` and back (a no-op for f32).
    pub fn cast(&self, dtype: Dtype) -> Expr {
        let g = &self.graph;
        if dtype == Dtype::F32 {
            return self.clone();
        }
        if let Some(c) = g.constant_of(self.id) {
            return g.constant(f64::from(dtype.round(c)));
        }
        g.expr(g.intern(Node::Cast(dtype, self.id)))
    }

    /// A deterministic text form (`add(input(x), input(b))`), the basis of the kernel name.
    pub fn canonical(&self) -> String {
        let nodes = self.graph.nodes();
        let mut memo: HashMap<NodeId, String> = HashMap::new();
        fn go(id: NodeId, nodes: &[Node], memo: &mut HashMap<NodeId, String>) -> String {
            if let Some(s) = memo.get(&id) {
                return s.clone();
            }
            let s = match &nodes[id] {
                Node::Input {
                    name, dtype, bcast, ..
                } => format!("{name}:{dtype:?}:{bcast:?}"),
                Node::Const(bits) => format!("{:?}", f32::from_bits(*bits)),
                Node::Unary(op, a) => format!("{op:?}({})", go(*a, nodes, memo)),
                Node::Binary(op, a, b) => {
                    format!("{op:?}({}, {})", go(*a, nodes, memo), go(*b, nodes, memo))
                }
                Node::Cmp(op, a, b) => {
                    format!("{op:?}({}, {})", go(*a, nodes, memo), go(*b, nodes, memo))
                }
                Node::Select(c, a, b) => format!(
                    "Select({}, {}, {})",
                    go(*c, nodes, memo),
                    go(*a, nodes, memo),
                    go(*b, nodes, memo)
                ),
                Node::Cast(t, a) => format!("Cast{t:?}({})", go(*a, nodes, memo)),
                Node::Reduce(op, a) => format!("Row{op:?}({})", go(*a, nodes, memo)),
            };
            memo.insert(id, s.clone());
            s
        }
        go(self.id, &nodes, &mut memo)
    }

    /// The nodes this expression needs, operands first (a topological order).
    pub fn reachable(&self) -> Vec<NodeId> {
        topo_order(&[self.id], &self.graph.nodes(), |_| true)
    }
}

impl Expr {
    /// `op` along the last dim: one value per row.
    pub fn reduce(&self, op: RedOp) -> Expr {
        self.graph.reduce(op, self.id)
    }

    /// Whether this expression is one value per row: it contains a reduction and reads no
    /// [`Bcast::Full`] or [`Bcast::Row`] input outside one (`rsqrt(mean(x * x) + 1e-5)`). Its
    /// kernel writes `rows` values; any other expression writes `rows * cols`.
    pub fn per_row(&self) -> bool {
        let (varies, reduces) = self.graph.row_structure();
        !varies[self.id] && reduces[self.id]
    }
}

/// The sum of each row of `x` (one value per row, usable like a [`Bcast::Col`] input).
pub fn sum(x: &Expr) -> Expr {
    x.reduce(RedOp::Sum)
}

/// The largest element of each row of `x` (NaN if any is NaN).
pub fn max(x: &Expr) -> Expr {
    x.reduce(RedOp::Max)
}

/// The mean of each row of `x`: its [`sum`] divided by `cols`.
pub fn mean(x: &Expr) -> Expr {
    x.reduce(RedOp::Mean)
}

/// Megatron's tanh-approximated GeLU of `x`.
pub fn gelu(x: Expr) -> Expr {
    x.un(UnOp::Gelu)
}

/// The derivative of [`gelu`] at `x`.
pub fn gelu_grad(x: Expr) -> Expr {
    x.un(UnOp::GeluGrad)
}

macro_rules! binop {
    ($tr:ident, $m:ident, $op:expr) => {
        impl $tr<&Expr> for &Expr {
            type Output = Expr;
            fn $m(self, rhs: &Expr) -> Expr {
                self.bin($op, rhs)
            }
        }
        impl $tr<Expr> for Expr {
            type Output = Expr;
            fn $m(self, rhs: Expr) -> Expr {
                self.bin($op, &rhs)
            }
        }
        impl $tr<&Expr> for Expr {
            type Output = Expr;
            fn $m(self, rhs: &Expr) -> Expr {
                self.bin($op, rhs)
            }
        }
        impl $tr<f64> for Expr {
            type Output = Expr;
            fn $m(self, rhs: f64) -> Expr {
                let c = self.graph.constant(rhs);
                self.bin($op, &c)
            }
        }
        impl $tr<f64> for &Expr {
            type Output = Expr;
            fn $m(self, rhs: f64) -> Expr {
                let c = self.graph.constant(rhs);
                self.bin($op, &c)
            }
        }
    };
}

binop!(Add, add, BinOp::Add);
binop!(Sub, sub, BinOp::Sub);
binop!(Mul, mul, BinOp::Mul);
binop!(Div, div, BinOp::Div);

impl Neg for Expr {
    type Output = Expr;
    fn neg(self) -> Expr {
        self.un(UnOp::Neg)
    }
}

impl Neg for &Expr {
    type Output = Expr;
    fn neg(self) -> Expr {
        self.un(UnOp::Neg)
    }
}

impl Node {
    /// The nodes this one reads, in order (none for inputs and constants).
    pub fn operands(&self) -> impl Iterator<Item = NodeId> {
        let (ops, n): ([NodeId; 3], usize) = match *self {
            Node::Input { .. } | Node::Const(_) => ([0; 3], 0),
            Node::Unary(_, a) | Node::Cast(_, a) | Node::Reduce(_, a) => ([a, 0, 0], 1),
            Node::Binary(_, a, b) | Node::Cmp(_, a, b) => ([a, b, 0], 2),
            Node::Select(c, a, b) => ([c, a, b], 3),
        };
        ops.into_iter().take(n)
    }
}

/// The nodes `targets` need, operands first (a topological order, each node once), looking into
/// a node's operands only when `descend(node)` says so.
pub fn topo_order(
    targets: &[NodeId],
    nodes: &[Node],
    descend: impl Fn(&Node) -> bool,
) -> Vec<NodeId> {
    fn visit(
        id: NodeId,
        nodes: &[Node],
        descend: &dyn Fn(&Node) -> bool,
        seen: &mut [bool],
        order: &mut Vec<NodeId>,
    ) {
        if seen[id] {
            return;
        }
        seen[id] = true;
        if descend(&nodes[id]) {
            for a in nodes[id].operands() {
                visit(a, nodes, descend, seen, order);
            }
        }
        order.push(id);
    }
    let mut seen = vec![false; nodes.len()];
    let mut order = Vec::new();
    for &t in targets {
        visit(t, nodes, &descend, &mut seen, &mut order);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_subexpressions_are_one_node_and_constants_fold() {
        let g = Graph::new();
        let x = g.input("x", Dtype::F32, Bcast::Full);
        let b = g.input("b", Dtype::F32, Bcast::Row);
        let a1 = &x + &b;
        let a2 = &b + &x;
        assert_eq!(a1.id(), a2.id(), "commutative CSE");
        let n = g.nodes().len();
        let y = gelu(a1.clone()) * gelu(a2);
        assert_eq!(g.nodes().len(), n + 2, "one gelu, one product");
        let c = g.constant(2.0) * 3.0 + 1.0;
        assert_eq!(g.nodes()[c.id()], Node::Const(7.0f32.to_bits()));
        assert_eq!((&y * 1.0).id(), y.id());
        assert_eq!(y.canonical(), y.canonical());
        assert!(y.canonical().contains("Gelu"));
        assert_eq!(*y.reachable().last().expect("root"), y.id());
    }

    #[test]
    fn reductions_are_per_row_values() {
        let g = Graph::new();
        let x = g.input("x", Dtype::F32, Bcast::Full);
        let s = g.input("s", Dtype::F32, Bcast::Col);
        let m = max(&x);
        assert_eq!(m.id(), max(&x).id(), "hash-consed");
        assert_ne!(m.id(), sum(&x).id());
        let e = (&x - &m).exp();
        let softmax = &e / &sum(&e);
        assert!(!softmax.per_row(), "uses x outside the reductions");
        assert!(m.per_row() && (sum(&e) * 2.0 + &s).per_row());
        assert!(!s.per_row() && !x.per_row(), "no reduction: elementwise");
        // max and mean of a per-row value are that value; sum is not (it depends on cols).
        assert_eq!(max(&m).id(), m.id());
        assert_eq!(mean(&(&m * 2.0)).id(), (&m * 2.0).id());
        assert_ne!(sum(&m).id(), m.id());
        assert_ne!(max(&s).id(), s.id(), "reduction-free: stays a reduction");
        assert!(max(&s).per_row());
        assert_eq!(softmax.canonical().matches("RowSum(").count(), 1);
        assert!(softmax.canonical().contains("RowMax(x:F32:Full)"));
        let order = softmax.reachable();
        let pos = |id| order.iter().position(|&o| o == id).expect("reachable");
        assert!(pos(m.id()) < pos(e.id()) && pos(e.id()) < pos(softmax.id()));
    }
}
