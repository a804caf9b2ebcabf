//! PTX text -> [`crate::ast::Module`]. Covers what nvcc 13.0 emits for sm_80 (PTX ISA 9.0):
//! module directives, `.entry`/`.func` with parameters and performance directives, register and
//! variable declarations (with `.align`, arrays, initializers), labels, guards, vector operands,
//! addresses and inline-asm scopes `{ ... }`. Every error names its line.

use crate::ast::{Function, Instruction, Module, Operand, Space, Statement, Type, VarDecl};
use crate::error::{EmuError, Result};

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// A word: opcode, directive (`.reg`), register, label or symbol.
    Word(String),
    Int(i128),
    Float {
        bits: u64,
        is_f32: bool,
    },
    Punct(char),
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    line: u32,
}

fn is_word_start(c: char) -> bool {
    c.is_ascii_alphabetic() || matches!(c, '_' | '$' | '%' | '.')
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '%' | '.')
}

fn lex(src: &str) -> Result<Vec<Token>> {
    let chars: Vec<char> = src.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    let mut line = 1u32;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                if chars[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 2;
        } else if c.is_ascii_digit()
            || (c == '-'
                && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())
                && !matches!(
                    toks.last(),
                    Some(Token {
                        tok: Tok::Word(_) | Tok::Int(_) | Tok::Punct(']') | Tok::Punct(')'),
                        ..
                    })
                ))
        {
            let start = i;
            let neg = c == '-';
            if neg {
                i += 1;
            }
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            toks.push(Token {
                tok: number(&text, line)?,
                line,
            });
        } else if is_word_start(c) {
            let start = i;
            while i < chars.len() && is_word_char(chars[i]) {
                i += 1;
            }
            toks.push(Token {
                tok: Tok::Word(chars[start..i].iter().collect()),
                line,
            });
        } else if "{}()[],;:@!+-<>=|".contains(c) {
            toks.push(Token {
                tok: Tok::Punct(c),
                line,
            });
            i += 1;
        } else if c == '"' {
            // Strings appear only in `.file` debug directives; skip them.
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += 1;
            }
            i += 1;
            toks.push(Token {
                tok: Tok::Word("\"\"".into()),
                line,
            });
        } else {
            return Err(EmuError::parse(line, format!("unexpected character {c:?}")));
        }
    }
    Ok(toks)
}

/// A numeric literal (PTX ISA 4.5.1): decimal, hex `0x`, octal `0`, binary `0b`, optional `U`
/// suffix; `0f` + 8 hex digits is an f32 bit pattern, `0d` + 16 an f64; decimal floats.
fn number(text: &str, line: u32) -> Result<Tok> {
    let bad = || EmuError::parse(line, format!("bad numeric literal {text:?}"));
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let lower = body.to_ascii_lowercase();
    if let Some(h) = lower.strip_prefix("0f") {
        if h.len() == 8 {
            let bits = u32::from_str_radix(h, 16).map_err(|_| bad())?;
            let bits = if neg { bits ^ 0x8000_0000 } else { bits };
            return Ok(Tok::Float {
                bits: u64::from(bits),
                is_f32: true,
            });
        }
    }
    if let Some(h) = lower.strip_prefix("0d") {
        if h.len() == 16 {
            let bits = u64::from_str_radix(h, 16).map_err(|_| bad())?;
            let bits = if neg { bits ^ (1 << 63) } else { bits };
            return Ok(Tok::Float {
                bits,
                is_f32: false,
            });
        }
    }
    let digits = lower.strip_suffix('u').unwrap_or(&lower);
    let value: i128 = if let Some(h) = digits.strip_prefix("0x") {
        i128::from_str_radix(h, 16).map_err(|_| bad())?
    } else if let Some(b) = digits.strip_prefix("0b") {
        i128::from_str_radix(b, 2).map_err(|_| bad())?
    } else if digits.contains('.') || digits.contains('e') {
        let v: f64 = digits.parse().map_err(|_| bad())?;
        let v = if neg { -v } else { v };
        return Ok(Tok::Float {
            bits: v.to_bits(),
            is_f32: false,
        });
    } else if digits.len() > 1 && digits.starts_with('0') {
        i128::from_str_radix(&digits[1..], 8).map_err(|_| bad())?
    } else {
        digits.parse::<i128>().map_err(|_| bad())?
    };
    Ok(Tok::Int(if neg { -value } else { value }))
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn peek_at(&self, k: usize) -> Option<&Tok> {
        self.toks.get(self.pos + k).map(|t| &t.tok)
    }

    fn line(&self) -> u32 {
        self.toks
            .get(self.pos)
            .or_else(|| self.toks.last())
            .map_or(0, |t| t.line)
    }

    fn next(&mut self) -> Result<Tok> {
        let t = self
            .toks
            .get(self.pos)
            .ok_or_else(|| EmuError::parse(self.line(), "unexpected end of file"))?;
        self.pos += 1;
        Ok(t.tok.clone())
    }

    fn err(&self, msg: impl Into<String>) -> EmuError {
        EmuError::parse(self.line(), msg)
    }

    fn eat_punct(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_punct(&mut self, c: char) -> Result<()> {
        if self.eat_punct(c) {
            Ok(())
        } else {
            Err(self.err(format!("expected '{c}', found {:?}", self.peek())))
        }
    }

    fn word(&mut self) -> Result<String> {
        match self.next()? {
            Tok::Word(w) => Ok(w),
            t => {
                self.pos -= 1;
                Err(self.err(format!("expected a name, found {t:?}")))
            }
        }
    }

    fn int(&mut self) -> Result<i128> {
        match self.next()? {
            Tok::Int(v) => Ok(v),
            t => {
                self.pos -= 1;
                Err(self.err(format!("expected an integer, found {t:?}")))
            }
        }
    }

    fn peek_word(&self) -> Option<&str> {
        match self.peek() {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }

    /// Skips to just past the next `;`.
    fn skip_statement(&mut self) -> Result<()> {
        loop {
            if self.next()? == Tok::Punct(';') {
                return Ok(());
            }
        }
    }

    fn module(&mut self) -> Result<Module> {
        let mut m = Module {
            address_size: 64,
            ..Module::default()
        };
        while let Some(tok) = self.peek().cloned() {
            let line = self.line();
            let Tok::Word(w) = tok else {
                return Err(self.err(format!("unexpected {tok:?} at module scope")));
            };
            match w.as_str() {
                ".version" => {
                    self.pos += 1;
                    let t = self.next()?;
                    let (major, minor) = match t {
                        Tok::Float { bits, .. } => {
                            let v = f64::from_bits(bits);
                            let s = format!("{v}");
                            let mut it = s.split('.');
                            let maj = it.next().unwrap_or("0").parse().unwrap_or(0);
                            let min = it.next().unwrap_or("0").parse().unwrap_or(0);
                            (maj, min)
                        }
                        Tok::Int(v) => (v as u32, 0),
                        other => return Err(self.err(format!("bad .version {other:?}"))),
                    };
                    m.version = (major, minor);
                }
                ".target" => {
                    self.pos += 1;
                    m.target.push(self.word()?);
                    while self.eat_punct(',') {
                        m.target.push(self.word()?);
                    }
                }
                ".address_size" => {
                    self.pos += 1;
                    m.address_size = self.int()? as u32;
                }
                ".file" | ".section" | ".loc" | ".pragma" => {
                    self.pos += 1;
                    if w == ".section" {
                        // debug sections: `.section .debug_x { ... }`
                        while !self.eat_punct('{') {
                            self.next()?;
                        }
                        let mut depth = 1;
                        while depth > 0 {
                            match self.next()? {
                                Tok::Punct('{') => depth += 1,
                                Tok::Punct('}') => depth -= 1,
                                _ => {}
                            }
                        }
                    } else if w == ".pragma" {
                        self.skip_statement()?;
                    } else {
                        while self.peek().is_some_and(
                            |t| !matches!(t, Tok::Word(x) if x.starts_with('.') && x != ".file"),
                        ) && self.line() == line
                        {
                            self.pos += 1;
                        }
                    }
                }
                ".visible" | ".extern" | ".weak" | ".entry" | ".func" | ".global" | ".shared"
                | ".const" => {
                    self.top_level(&mut m)?;
                }
                _ => return Err(self.err(format!("unexpected {w:?} at module scope"))),
            }
        }
        Ok(m)
    }

    fn top_level(&mut self, m: &mut Module) -> Result<()> {
        let mut is_extern = false;
        while let Some(w) = self.peek_word() {
            match w {
                ".visible" | ".weak" => self.pos += 1,
                ".extern" => {
                    is_extern = true;
                    self.pos += 1;
                }
                _ => break,
            }
        }
        let line = self.line();
        let w = self.word()?;
        match w.as_str() {
            ".entry" | ".func" => {
                let f = self.function(w == ".entry", line)?;
                m.functions.push(f);
            }
            ".global" | ".shared" | ".const" => {
                let space = space_of(&w).expect("listed");
                let mut v = self.var_decl(space, line)?;
                v.is_extern = is_extern;
                m.globals.push(v);
            }
            other => return Err(self.err(format!("unexpected {other:?} at module scope"))),
        }
        Ok(())
    }

    fn function(&mut self, is_entry: bool, line: u32) -> Result<Function> {
        let mut returns = Vec::new();
        if self.peek() == Some(&Tok::Punct('(')) {
            // .func (.param .b32 ret) name(...)
            returns = self.param_list()?;
        }
        let name = self.word()?;
        let params = if self.peek() == Some(&Tok::Punct('(')) {
            self.param_list()?
        } else {
            Vec::new()
        };
        let mut f = Function {
            name,
            is_entry,
            params,
            returns,
            maxntid: None,
            reqntid: None,
            body: None,
            line,
        };
        loop {
            match self.peek() {
                Some(Tok::Punct(';')) => {
                    self.pos += 1;
                    return Ok(f);
                }
                Some(Tok::Punct('{')) => break,
                Some(Tok::Word(w)) => {
                    let w = w.clone();
                    self.pos += 1;
                    match w.as_str() {
                        ".maxntid" | ".reqntid" => {
                            let mut dims = [1u32; 3];
                            dims[0] = self.int()? as u32;
                            let mut k = 1;
                            while self.eat_punct(',') {
                                if k < 3 {
                                    dims[k] = self.int()? as u32;
                                }
                                k += 1;
                            }
                            if w == ".maxntid" {
                                f.maxntid = Some(dims);
                            } else {
                                f.reqntid = Some(dims);
                            }
                        }
                        ".minnctapersm" | ".maxnreg" | ".maxnctapersm" => {
                            self.int()?;
                        }
                        ".noreturn" => {}
                        other => {
                            return Err(self.err(format!("unexpected {other:?} after {}", f.name)))
                        }
                    }
                }
                other => return Err(self.err(format!("unexpected {other:?} after {}", f.name))),
            }
        }
        self.expect_punct('{')?;
        let mut body = Vec::new();
        let mut depth = 1;
        while depth > 0 {
            let line = self.line();
            match self.peek() {
                None => return Err(self.err(format!("unterminated body of {}", f.name))),
                Some(Tok::Punct('{')) => {
                    self.pos += 1;
                    depth += 1;
                    body.push(Statement::Open(line));
                }
                Some(Tok::Punct('}')) => {
                    self.pos += 1;
                    depth -= 1;
                    if depth > 0 {
                        body.push(Statement::Close(line));
                    }
                }
                _ => body.push(self.statement()?),
            }
        }
        f.body = Some(body);
        Ok(f)
    }

    fn param_list(&mut self) -> Result<Vec<VarDecl>> {
        self.expect_punct('(')?;
        let mut params = Vec::new();
        if self.eat_punct(')') {
            return Ok(params);
        }
        loop {
            let line = self.line();
            let w = self.word()?;
            let space = match w.as_str() {
                ".param" => Space::Param,
                ".reg" => Space::Reg,
                other => return Err(self.err(format!("expected .param, found {other:?}"))),
            };
            params.push(self.var_decl_no_semicolon(space, line)?);
            if self.eat_punct(')') {
                return Ok(params);
            }
            self.expect_punct(',')?;
        }
    }

    /// `[.align N] [.vN] .type name[len] [= init]` (the space word already consumed).
    fn var_decl_no_semicolon(&mut self, space: Space, line: u32) -> Result<VarDecl> {
        let mut align = None;
        let mut vector = 1;
        let mut ty = None;
        while let Some(w) = self.peek_word().map(str::to_string) {
            if w == ".align" {
                self.pos += 1;
                align = Some(self.int()? as u32);
            } else if let Some(v) = w.strip_prefix(".v").and_then(|n| n.parse::<u32>().ok()) {
                self.pos += 1;
                vector = v;
            } else if w == ".ptr" || w == ".global" || w == ".shared" || w == ".const" {
                // `.param .u64 .ptr .global .align 16 name` (kernel pointer attributes).
                self.pos += 1;
            } else if let Some(t) = w.strip_prefix('.').and_then(Type::from_name) {
                self.pos += 1;
                ty = Some(t);
            } else {
                break;
            }
        }
        let ty = ty.ok_or_else(|| self.err("declaration without a type"))?;
        let name = self.word()?;
        let mut array = None;
        while self.eat_punct('[') {
            let len = if self.eat_punct(']') {
                0
            } else {
                let n = self.int()? as u64;
                self.expect_punct(']')?;
                n
            };
            array = Some(array.unwrap_or(1) * len.max(if len == 0 { 0 } else { 1 }));
        }
        let mut init = Vec::new();
        if self.eat_punct('=') {
            let braced = self.eat_punct('{');
            loop {
                match self.next()? {
                    Tok::Int(v) => init.push(v as u64),
                    Tok::Float { bits, is_f32 } => init.push(if is_f32 {
                        bits
                    } else if ty == Type::F32 {
                        u64::from((f64::from_bits(bits) as f32).to_bits())
                    } else {
                        bits
                    }),
                    Tok::Punct('{') | Tok::Punct('}') => {}
                    t => return Err(self.err(format!("unsupported initializer {t:?}"))),
                }
                if !self.eat_punct(',') {
                    break;
                }
            }
            if braced {
                while self.eat_punct('}') {}
            }
        }
        Ok(VarDecl {
            space,
            ty,
            align,
            vector,
            name,
            array,
            is_extern: false,
            init,
            line,
        })
    }

    fn var_decl(&mut self, space: Space, line: u32) -> Result<VarDecl> {
        let v = self.var_decl_no_semicolon(space, line)?;
        self.expect_punct(';')?;
        Ok(v)
    }

    fn statement(&mut self) -> Result<Statement> {
        let line = self.line();
        // Label?
        if let (Some(Tok::Word(w)), Some(Tok::Punct(':'))) = (self.peek(), self.peek_at(1)) {
            let w = w.clone();
            self.pos += 2;
            return Ok(Statement::Label(w, line));
        }
        if let Some(w) = self.peek_word() {
            match w {
                ".reg" => {
                    self.pos += 1;
                    return self.reg_decl(line);
                }
                ".shared" | ".local" | ".const" | ".global" => {
                    let space = space_of(w).expect("listed");
                    self.pos += 1;
                    return Ok(Statement::Var(self.var_decl(space, line)?));
                }
                ".pragma" | ".loc" | ".file" => {
                    self.skip_statement_or_line(line)?;
                    return self.statement_or_skip(line);
                }
                _ => {}
            }
        }
        Ok(Statement::Instr(self.instruction(line)?))
    }

    /// After skipping a directive, parse the next statement (a directive is not a statement).
    fn statement_or_skip(&mut self, _line: u32) -> Result<Statement> {
        if self.peek() == Some(&Tok::Punct('}')) || self.peek() == Some(&Tok::Punct('{')) {
            let line = self.line();
            // Represent a skipped directive as an empty scope pair is overkill; emit a no-op label.
            return Ok(Statement::Label(String::new(), line));
        }
        self.statement()
    }

    fn skip_statement_or_line(&mut self, line: u32) -> Result<()> {
        // `.loc 1 2 3` has no semicolon; `.pragma "x";` has one.
        while let Some(t) = self.peek() {
            if *t == Tok::Punct(';') {
                self.pos += 1;
                return Ok(());
            }
            if self.line() != line {
                return Ok(());
            }
            self.pos += 1;
        }
        Ok(())
    }

    fn reg_decl(&mut self, line: u32) -> Result<Statement> {
        let mut vector = 1;
        let mut ty = None;
        while let Some(w) = self.peek_word().map(str::to_string) {
            if let Some(v) = w.strip_prefix(".v").and_then(|n| n.parse::<u32>().ok()) {
                self.pos += 1;
                vector = v;
            } else if let Some(t) = w.strip_prefix('.').and_then(Type::from_name) {
                self.pos += 1;
                ty = Some(t);
            } else {
                break;
            }
        }
        let ty = ty.ok_or_else(|| self.err(".reg without a type"))?;
        let mut names = Vec::new();
        loop {
            let base = self.word()?;
            if self.eat_punct('<') {
                let n = self.int()?;
                self.expect_punct('>')?;
                for k in 0..n {
                    names.push(format!("{base}{k}"));
                }
            } else {
                names.push(base);
            }
            if !self.eat_punct(',') {
                break;
            }
        }
        self.expect_punct(';')?;
        Ok(Statement::Reg {
            ty,
            vector,
            names,
            line,
        })
    }

    fn instruction(&mut self, line: u32) -> Result<Instruction> {
        let mut guard = None;
        if self.eat_punct('@') {
            let neg = self.eat_punct('!');
            guard = Some((self.word()?, neg));
        }
        let full = self.word()?;
        let mut parts = full.split('.');
        let opcode = parts.next().unwrap_or("").to_string();
        if opcode.is_empty() {
            return Err(EmuError::parse(
                line,
                format!("expected an opcode, found {full:?}"),
            ));
        }
        let modifiers: Vec<String> = parts.map(str::to_string).collect();
        let mut operands = Vec::new();
        if !self.eat_punct(';') {
            loop {
                operands.push(self.operand()?);
                if self.eat_punct(';') {
                    break;
                }
                self.expect_punct(',')?;
            }
        }
        Ok(Instruction {
            guard,
            opcode,
            modifiers,
            operands,
            line,
        })
    }

    fn operand(&mut self) -> Result<Operand> {
        let neg = self.eat_punct('!');
        let t = self.next()?;
        let op = match t {
            Tok::Word(w) if w == "_" => Operand::Sink,
            Tok::Word(w) => {
                if self.eat_punct('|') {
                    let b = self.word()?;
                    Operand::PredPair(w, b)
                } else if self.peek() == Some(&Tok::Punct('+'))
                    && matches!(self.peek_at(1), Some(Tok::Int(_)))
                {
                    // `sym+4` as a plain operand (mov.u64 %rd, sym+4): treat as an address.
                    self.pos += 1;
                    let off = self.int()? as i64;
                    Operand::Address {
                        base: Some(w),
                        offset: off,
                    }
                } else {
                    Operand::Name(w)
                }
            }
            Tok::Int(v) => Operand::Int(v),
            Tok::Float { bits, is_f32 } => Operand::Float { bits, is_f32 },
            Tok::Punct('[') => {
                let mut base = None;
                let mut offset: i64 = 0;
                loop {
                    match self.next()? {
                        Tok::Word(w) => base = Some(w),
                        Tok::Int(v) => offset = offset.wrapping_add(v as i64),
                        Tok::Punct('+') => {}
                        Tok::Punct('-') => {
                            let v = self.int()?;
                            offset = offset.wrapping_sub(v as i64);
                        }
                        Tok::Punct(']') => break,
                        other => return Err(self.err(format!("unexpected {other:?} in address"))),
                    }
                }
                Operand::Address { base, offset }
            }
            Tok::Punct('{') => {
                let mut items = Vec::new();
                if !self.eat_punct('}') {
                    loop {
                        items.push(self.operand()?);
                        if self.eat_punct('}') {
                            break;
                        }
                        self.expect_punct(',')?;
                    }
                }
                Operand::Vector(items)
            }
            Tok::Punct('(') => {
                let mut items = Vec::new();
                if !self.eat_punct(')') {
                    loop {
                        items.push(self.operand()?);
                        if self.eat_punct(')') {
                            break;
                        }
                        self.expect_punct(',')?;
                    }
                }
                Operand::List(items)
            }
            Tok::Punct('-') => match self.next()? {
                Tok::Int(v) => Operand::Int(-v),
                other => return Err(self.err(format!("unexpected {other:?} after '-'"))),
            },
            other => return Err(self.err(format!("unexpected {other:?} as an operand"))),
        };
        if neg {
            // `!%p` as a source operand of a predicate logic op.
            if let Operand::Name(n) = op {
                return Ok(Operand::Name(format!("!{n}")));
            }
            return Err(self.err("'!' before a non-register operand"));
        }
        Ok(op)
    }
}

fn space_of(w: &str) -> Option<Space> {
    Some(match w {
        ".global" => Space::Global,
        ".shared" => Space::Shared,
        ".local" => Space::Local,
        ".const" => Space::Const,
        ".param" => Space::Param,
        ".reg" => Space::Reg,
        _ => return None,
    })
}

/// Parses a PTX module.
///
/// # Errors
/// [`EmuError::Parse`] naming the line and what was unexpected.
pub fn parse(src: &str) -> Result<Module> {
    let toks = lex(src)?;
    let mut p = Parser { toks, pos: 0 };
    p.module()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entry_params_regs_and_instructions() {
        let src = r#"
.version 9.0
.target sm_80
.address_size 64
.visible .entry k(
	.param .align 8 .b8 k_param_0[40],
	.param .u32 k_param_1
)
.maxntid 256, 1, 1
{
	.reg .pred 	%p<3>;
	.reg .b64 	%rd<4>;
	.shared .align 16 .b8 smem[1024];
	ld.param.u64 	%rd1, [k_param_0+32];
	@!%p1 bra 	$L__BB0_2;
	ld.global.nc.v2.u16 	{%rs8, %rs9}, [%rd1+-4];
	{ mov.b32 %f1, {0,%rs1};}
	mul.f32 %f2, %f1, 0f3F800000;
	and.b64 %rd2, %rd1, -4294967296;
$L__BB0_2:
	ret;
}
"#;
        let m = parse(src).unwrap();
        assert_eq!(m.version, (9, 0));
        assert_eq!(m.target, vec!["sm_80"]);
        let f = &m.functions[0];
        assert!(f.is_entry);
        assert_eq!(f.params.len(), 2);
        assert_eq!(f.params[0].size_bytes(), 40);
        assert_eq!(f.params[0].alignment(), 8);
        assert_eq!(f.maxntid, Some([256, 1, 1]));
        let body = f.body.as_ref().unwrap();
        let instrs: Vec<&Instruction> = body
            .iter()
            .filter_map(|s| match s {
                Statement::Instr(i) => Some(i),
                _ => None,
            })
            .collect();
        assert_eq!(instrs[0].full_opcode(), "ld.param.u64");
        assert_eq!(
            instrs[0].operands[1],
            Operand::Address {
                base: Some("k_param_0".into()),
                offset: 32
            }
        );
        assert_eq!(instrs[1].guard, Some(("%p1".into(), true)));
        assert_eq!(
            instrs[2].operands[1],
            Operand::Address {
                base: Some("%rd1".into()),
                offset: -4
            }
        );
        assert_eq!(
            instrs[3].operands[1],
            Operand::Vector(vec![Operand::Int(0), Operand::Name("%rs1".into())])
        );
        assert_eq!(
            instrs[4].operands[2],
            Operand::Float {
                bits: 0x3F80_0000,
                is_f32: true
            }
        );
        assert_eq!(instrs[5].operands[2], Operand::Int(-4294967296));
        assert!(body.iter().any(|s| matches!(s, Statement::Open(_))));
        assert!(body
            .iter()
            .any(|s| matches!(s, Statement::Var(v) if v.name == "smem" && v.size_bytes() == 1024)));
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse(".version 9.0\n.target sm_80\n.entry k()\n{\n  add.s32 %r1, %r2 %r3;\n}\n")
            .unwrap_err();
        assert!(e.to_string().contains("line 5"), "{e}");
        let e = parse(".version 9.0\n#bad\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
