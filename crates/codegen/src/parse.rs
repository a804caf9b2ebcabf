//! Text to expression: `gelu(x + b) * s`, for the command line.
//!
//! Grammar: `expr := term (('+' | '-') term)*`, `term := unary (('*' | '/') unary)*`,
//! `unary := '-' unary | atom`, `atom := number | name | name '(' expr (',' expr)* ')' |
//! '(' expr ')'`. Names are the declared inputs; functions: `exp log tanh erf sqrt rsqrt abs
//! gelu gelu_grad max min bf16 sum mean` (`bf16(a)` rounds to bf16). Reductions along the last
//! dim: `sum(a)`, `mean(a)` and `max(a)` with one argument (`max(a, b)` with two is the
//! elementwise maximum), e.g. softmax `exp(x - max(x)) / sum(exp(x - max(x)))`.

use crate::expr::{gelu, gelu_grad, Bcast, Dtype, Expr, Graph, RedOp};

/// A parse error with the byte offset it was found at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the text.
    pub at: usize,
    /// What was wrong.
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at byte {}: {}", self.at, self.message)
    }
}

impl std::error::Error for ParseError {}

struct P<'a> {
    s: &'a [u8],
    i: usize,
    g: Graph,
    inputs: Vec<(String, Expr)>,
}

impl P<'_> {
    fn err<T>(&self, m: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            at: self.i,
            message: m.into(),
        })
    }
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expr(&mut self) -> Result<Expr, ParseError> {
        let mut a = self.term()?;
        loop {
            if self.eat(b'+') {
                a = a + self.term()?;
            } else if self.eat(b'-') {
                a = a - self.term()?;
            } else {
                return Ok(a);
            }
        }
    }
    fn term(&mut self) -> Result<Expr, ParseError> {
        let mut a = self.unary()?;
        loop {
            if self.eat(b'*') {
                a = a * self.unary()?;
            } else if self.eat(b'/') {
                a = a / self.unary()?;
            } else {
                return Ok(a);
            }
        }
    }
    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat(b'-') {
            return Ok(-self.unary()?);
        }
        self.atom()
    }
    fn atom(&mut self) -> Result<Expr, ParseError> {
        self.ws();
        if self.eat(b'(') {
            let e = self.expr()?;
            if !self.eat(b')') {
                return self.err("expected ')'");
            }
            return Ok(e);
        }
        let start = self.i;
        let c = match self.s.get(self.i) {
            Some(&c) => c,
            None => return self.err("unexpected end of expression"),
        };
        if c.is_ascii_digit() || c == b'.' {
            while self.i < self.s.len()
                && (self.s[self.i].is_ascii_alphanumeric() || matches!(self.s[self.i], b'.' | b'_'))
            {
                self.i += 1;
            }
            // An exponent sign: 1e-3.
            while self.i < self.s.len()
                && matches!(self.s[self.i], b'+' | b'-')
                && matches!(self.s[self.i - 1], b'e' | b'E')
            {
                self.i += 1;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
            }
            let t = String::from_utf8_lossy(&self.s[start..self.i]).to_string();
            return match t.parse::<f64>() {
                Ok(v) => Ok(self.g.constant(v)),
                Err(_) => {
                    self.i = start;
                    self.err(format!("bad number {t:?}"))
                }
            };
        }
        if !(c.is_ascii_alphabetic() || c == b'_') {
            return self.err(format!("unexpected {:?}", c as char));
        }
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
        {
            self.i += 1;
        }
        let name = String::from_utf8_lossy(&self.s[start..self.i]).to_string();
        if self.eat(b'(') {
            let mut args = vec![self.expr()?];
            while self.eat(b',') {
                args.push(self.expr()?);
            }
            if !self.eat(b')') {
                return self.err("expected ')' after the arguments");
            }
            let one = |args: Vec<Expr>, p: &Self| -> Result<Expr, ParseError> {
                match <[Expr; 1]>::try_from(args) {
                    Ok([a]) => Ok(a),
                    Err(v) => p.err(format!("{name} takes 1 argument, got {}", v.len())),
                }
            };
            let two = |args: Vec<Expr>, p: &Self| -> Result<(Expr, Expr), ParseError> {
                match <[Expr; 2]>::try_from(args) {
                    Ok([a, b]) => Ok((a, b)),
                    Err(v) => p.err(format!("{name} takes 2 arguments, got {}", v.len())),
                }
            };
            return Ok(match name.as_str() {
                "exp" => one(args, self)?.exp(),
                "log" => one(args, self)?.log(),
                "tanh" => one(args, self)?.tanh(),
                "erf" => one(args, self)?.erf(),
                "sqrt" => one(args, self)?.sqrt(),
                "rsqrt" => one(args, self)?.rsqrt(),
                "abs" => one(args, self)?.abs(),
                "gelu" => gelu(one(args, self)?),
                "gelu_grad" => gelu_grad(one(args, self)?),
                "bf16" => one(args, self)?.cast(Dtype::Bf16),
                "sum" => one(args, self)?.reduce(RedOp::Sum),
                "mean" => one(args, self)?.reduce(RedOp::Mean),
                "max" if args.len() == 1 => one(args, self)?.reduce(RedOp::Max),
                "max" => {
                    let (a, b) = match two(args, self) {
                        Ok(ab) => ab,
                        Err(e) => {
                            return Err(ParseError {
                                message: "max takes 1 argument (the row maximum) or 2".into(),
                                ..e
                            })
                        }
                    };
                    a.max(&b)
                }
                "min" => {
                    let (a, b) = two(args, self)?;
                    a.min(&b)
                }
                _ => {
                    self.i = start;
                    return self.err(format!("unknown function {name}"));
                }
            });
        }
        match self.inputs.iter().find(|(n, _)| *n == name) {
            Some((_, e)) => Ok(e.clone()),
            None => {
                self.i = start;
                let known: Vec<&str> = self.inputs.iter().map(|(n, _)| n.as_str()).collect();
                self.err(format!(
                    "unknown input {name} (declared: {})",
                    known.join(", ")
                ))
            }
        }
    }
}

/// Parses `text` over the declared `inputs` (name, dtype, broadcast; declared in this order).
///
/// # Errors
/// [`ParseError`] naming the offset and what was wrong (unknown input or function, wrong
/// argument count, a bad number, unbalanced parentheses, trailing text).
pub fn parse(text: &str, inputs: &[(&str, Dtype, Bcast)]) -> Result<Expr, ParseError> {
    let g = Graph::new();
    let inputs = inputs
        .iter()
        .map(|(n, d, b)| (n.to_string(), g.input(n, *d, *b)))
        .collect();
    let mut p = P {
        s: text.as_bytes(),
        i: 0,
        g,
        inputs,
    };
    let e = p.expr()?;
    p.ws();
    if p.i != p.s.len() {
        return p.err("trailing text");
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::evaluate;

    #[test]
    fn parses_and_evaluates() {
        let ins = [
            ("x", Dtype::F32, Bcast::Full),
            ("b", Dtype::F32, Bcast::Row),
            ("s", Dtype::F32, Bcast::Scalar),
        ];
        let e = parse("gelu(x + b) * s - max(x, -1.5e-1) / 2", &ins).expect("parse");
        let v = evaluate(&e, 1, 1, &[&[0.5], &[0.25], &[2.0]]).expect("eval");
        let want = crate::expr::gelu_f64(0.75) * 2.0 - 0.5 / 2.0;
        assert!(
            (v.values[0] - want).abs() < 1e-6,
            "{} vs {want}",
            v.values[0]
        );
        for bad in [
            "gelu(x",
            "y + 1",
            "foo(x)",
            "max(x, x, x)",
            "sum(x, b)",
            "min(x)",
            "1 +",
            "x )",
            "1.2.3",
        ] {
            let err = parse(bad, &ins).expect_err(bad);
            assert!(!err.message.is_empty(), "{bad}");
        }
    }

    #[test]
    fn parses_reductions() {
        let ins = [
            ("x", Dtype::F32, Bcast::Full),
            ("g", Dtype::F32, Bcast::Row),
        ];
        let e = parse("exp(x - max(x)) / sum(exp(x - max(x))) + max(x, g)", &ins).expect("parse");
        let c = e.canonical();
        assert!(
            c.contains("RowMax(x:F32:Full)") && c.contains("RowSum("),
            "{c}"
        );
        assert!(
            c.contains("Max(x:F32:Full, g:F32:Row)"),
            "binary max stays: {c}"
        );
        let m = parse("mean(x * g)", &ins).expect("parse");
        assert!(m.per_row());
        let v = evaluate(&m, 2, 2, &[&[1.0, 2.0, 3.0, 4.0], &[1.0, 0.5]]).expect("eval");
        assert_eq!(v.values, vec![1.0, 2.5]);
    }
}
