//! The `${{ }}` expression language: conditions for `if:` and substitutions
//! inside strings.
//!
//! This module owns lexing, parsing and evaluating expressions over a flat
//! map of string variables plus the job-status functions. It must not know
//! about YAML, pipeline structure or where variables come from; callers pass
//! the variables in and map [`ExprError`] offsets to file positions.
//!
//! Semantics follow GitHub Actions where it matters to users: string
//! comparison ignores case, mixed-type comparison goes through numbers, and
//! `&&`/`||` yield one of their operands.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Nesting beyond this is rejected so recursive evaluation stays shallow.
const MAX_NESTING: usize = 64;

/// Variable names accepted in expressions, for error hints.
const KNOWN_VARIABLES: &str = "ref, sha, repository, run.number, matrix.<key>, env.<name>";

/// A problem in an expression; `offset` is a byte offset into the source
/// string that was handed to the parser.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at offset {offset}: {message}")]
pub struct ExprError {
    pub offset: usize,
    pub message: String,
}

impl ExprError {
    fn new(offset: usize, message: impl Into<String>) -> Self {
        Self {
            offset,
            message: message.into(),
        }
    }
}

/// Outcome of the jobs a job depends on, as seen by status functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JobStatus {
    pub needs_all_succeeded: bool,
    pub needs_any_failed: bool,
    pub run_cancelled: bool,
}

/// Everything a condition may look at.
#[derive(Debug, Clone, Copy)]
pub struct EvalContext<'a> {
    pub vars: &'a BTreeMap<String, String>,
    pub status: JobStatus,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
}

impl Value {
    fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Num(n) => *n != 0.0 && !n.is_nan(),
            Value::Str(s) => !s.is_empty(),
        }
    }

    fn to_number(&self) -> f64 {
        match self {
            Value::Null => 0.0,
            Value::Bool(b) => f64::from(u8::from(*b)),
            Value::Num(n) => *n,
            Value::Str(s) => {
                let t = s.trim();
                if t.is_empty() {
                    0.0
                } else {
                    t.parse().unwrap_or(f64::NAN)
                }
            }
        }
    }

    fn into_text(self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Num(n) => format_number(n),
            Value::Str(s) => s,
        }
    }

    fn loosely_equals(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Str(a), Value::Str(b)) => a.to_lowercase() == b.to_lowercase(),
            _ => {
                let (a, b) = (self.to_number(), other.to_number());
                a == b
            }
        }
    }
}

/// Integers print without a fraction so `${{ matrix.shard }}` yields `1`.
pub(crate) fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Success,
    Failure,
    Always,
    Cancelled,
    StartsWith,
    EndsWith,
    Contains,
}

impl Func {
    fn lookup(name: &str) -> Option<Func> {
        // Function names are case-insensitive, as in GitHub Actions.
        Some(match name.to_ascii_lowercase().as_str() {
            "success" => Func::Success,
            "failure" => Func::Failure,
            "always" => Func::Always,
            "cancelled" => Func::Cancelled,
            "startswith" => Func::StartsWith,
            "endswith" => Func::EndsWith,
            "contains" => Func::Contains,
            _ => return None,
        })
    }

    fn arity(self) -> usize {
        match self {
            Func::Success | Func::Failure | Func::Always | Func::Cancelled => 0,
            Func::StartsWith | Func::EndsWith | Func::Contains => 2,
        }
    }

    fn is_status(self) -> bool {
        self.arity() == 0
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Lit(Value),
    Var {
        name: String,
        offset: usize,
    },
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Eq {
        negate: bool,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Call {
        func: Func,
        args: Vec<Expr>,
    },
}

impl Expr {
    fn eval(&self, ctx: &EvalContext<'_>) -> Value {
        match self {
            Expr::Lit(v) => v.clone(),
            Expr::Var { name, .. } => ctx
                .vars
                .get(name)
                .map_or(Value::Null, |v| Value::Str(v.clone())),
            Expr::Not(e) => Value::Bool(!e.eval(ctx).truthy()),
            Expr::And(items) => {
                let mut last = Value::Bool(true);
                for item in items {
                    last = item.eval(ctx);
                    if !last.truthy() {
                        break;
                    }
                }
                last
            }
            Expr::Or(items) => {
                let mut last = Value::Bool(false);
                for item in items {
                    last = item.eval(ctx);
                    if last.truthy() {
                        break;
                    }
                }
                last
            }
            Expr::Eq { negate, lhs, rhs } => {
                Value::Bool(lhs.eval(ctx).loosely_equals(&rhs.eval(ctx)) != *negate)
            }
            Expr::Call { func, args } => {
                let s = ctx.status;
                let text = |i: usize| {
                    args.get(i)
                        .map(|a| a.eval(ctx).into_text().to_lowercase())
                        .unwrap_or_default()
                };
                Value::Bool(match func {
                    Func::Success => s.needs_all_succeeded && !s.run_cancelled,
                    Func::Failure => s.needs_any_failed,
                    Func::Always => true,
                    Func::Cancelled => s.run_cancelled,
                    Func::StartsWith => text(0).starts_with(&text(1)),
                    Func::EndsWith => text(0).ends_with(&text(1)),
                    Func::Contains => text(0).contains(&text(1)),
                })
            }
        }
    }

    /// Visits every node without recursion so the walk is safe on any tree.
    fn walk(&self, mut f: impl FnMut(&Expr)) {
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            f(e);
            match e {
                Expr::Lit(_) | Expr::Var { .. } => {}
                Expr::Not(inner) => stack.push(inner),
                Expr::And(items) | Expr::Or(items) => stack.extend(items.iter()),
                Expr::Eq { lhs, rhs, .. } => {
                    stack.push(lhs);
                    stack.push(rhs);
                }
                Expr::Call { args, .. } => stack.extend(args.iter()),
            }
        }
    }

    fn uses_status_function(&self) -> bool {
        let mut found = false;
        self.walk(|e| {
            if let Expr::Call { func, .. } = e {
                found |= func.is_status();
            }
        });
        found
    }

    fn variables(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        self.walk(|e| {
            if let Expr::Var { name, offset } = e {
                out.push((name.clone(), *offset));
            }
        });
        out.sort_by_key(|(_, offset)| *offset);
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Num(f64),
    Ident(String),
    LParen,
    RParen,
    Comma,
    Not,
    And,
    Or,
    EqEq,
    NotEq,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Lexes `src`, reporting token offsets relative to `base` so callers that
/// lex a slice of a larger string get offsets into the whole string.
fn lex(src: &str, base: usize) -> Result<Vec<(Tok, usize)>, ExprError> {
    let bytes: Vec<(usize, char)> = src.char_indices().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let (off, c) = bytes[i];
        let at = base + off;
        let peek = bytes.get(i + 1).map(|&(_, c)| c);
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                toks.push((Tok::LParen, at));
                i += 1;
            }
            ')' => {
                toks.push((Tok::RParen, at));
                i += 1;
            }
            ',' => {
                toks.push((Tok::Comma, at));
                i += 1;
            }
            '!' if peek == Some('=') => {
                toks.push((Tok::NotEq, at));
                i += 2;
            }
            '!' => {
                toks.push((Tok::Not, at));
                i += 1;
            }
            '=' if peek == Some('=') => {
                toks.push((Tok::EqEq, at));
                i += 2;
            }
            '&' if peek == Some('&') => {
                toks.push((Tok::And, at));
                i += 2;
            }
            '|' if peek == Some('|') => {
                toks.push((Tok::Or, at));
                i += 2;
            }
            '\'' | '"' => {
                let quote = c;
                let mut text = String::new();
                let mut j = i + 1;
                let mut closed = false;
                while j < bytes.len() {
                    let ch = bytes[j].1;
                    if ch == quote {
                        // A doubled quote is an escaped quote, as in GitHub's syntax.
                        if bytes.get(j + 1).map(|&(_, c)| c) == Some(quote) {
                            text.push(quote);
                            j += 2;
                            continue;
                        }
                        closed = true;
                        break;
                    }
                    text.push(ch);
                    j += 1;
                }
                if !closed {
                    return Err(ExprError::new(at, "unterminated string literal"));
                }
                toks.push((Tok::Str(text), at));
                i = j + 1;
            }
            c if c.is_ascii_digit() || (c == '-' && peek.is_some_and(|p| p.is_ascii_digit())) => {
                let mut j = i + 1;
                while j < bytes.len() && (bytes[j].1.is_ascii_digit() || bytes[j].1 == '.') {
                    j += 1;
                }
                let end = bytes.get(j).map_or(src.len(), |&(o, _)| o);
                let text = &src[off..end];
                let n: f64 = text
                    .parse()
                    .map_err(|_| ExprError::new(at, format!("invalid number `{text}`")))?;
                toks.push((Tok::Num(n), at));
                i = j;
            }
            c if is_ident_start(c) => {
                let mut j = i + 1;
                loop {
                    while j < bytes.len() && is_ident_char(bytes[j].1) {
                        j += 1;
                    }
                    let dotted =
                        j + 1 < bytes.len() && bytes[j].1 == '.' && is_ident_start(bytes[j + 1].1);
                    if dotted {
                        j += 1;
                    } else {
                        break;
                    }
                }
                let end = bytes.get(j).map_or(src.len(), |&(o, _)| o);
                toks.push((Tok::Ident(src[off..end].to_string()), at));
                i = j;
            }
            other => {
                return Err(ExprError::new(
                    at,
                    format!("unexpected character `{other}`"),
                ));
            }
        }
    }
    Ok(toks)
}

/// Maps accepted spellings to the canonical variable names used in the
/// variable map, so evaluation needs a single lookup.
fn canonical_variable(name: &str) -> Option<String> {
    Some(match name {
        "ref" | "github.ref" => "ref".into(),
        "sha" | "github.sha" => "sha".into(),
        "repository" | "github.repository" => "repository".into(),
        "run.number" | "github.run_number" => "run.number".into(),
        _ => {
            let (ns, key) = name.split_once('.')?;
            if (ns == "matrix" || ns == "env" || ns == "secrets")
                && !key.is_empty()
                && !key.contains('.')
            {
                name.to_string()
            } else {
                return None;
            }
        }
    })
}

struct ExprParser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    end: usize,
    depth: usize,
}

impl ExprParser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(_, o)| *o)
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(ExprError::new(
                self.offset(),
                format!("expression nested deeper than {MAX_NESTING} levels"),
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut items = vec![self.and()?];
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::Or(items)
        })
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut items = vec![self.comparison()?];
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            items.push(self.comparison()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::And(items)
        })
    }

    fn comparison(&mut self) -> Result<Expr, ExprError> {
        let lhs = self.unary()?;
        let negate = match self.peek() {
            Some(Tok::EqEq) => false,
            Some(Tok::NotEq) => true,
            _ => return Ok(lhs),
        };
        self.pos += 1;
        let rhs = self.unary()?;
        if matches!(self.peek(), Some(Tok::EqEq | Tok::NotEq)) {
            // Chained comparisons read ambiguously; demanding parentheses
            // also keeps the tree shallow.
            return Err(ExprError::new(
                self.offset(),
                "comparisons cannot be chained; add parentheses",
            ));
        }
        Ok(Expr::Eq {
            negate,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
        })
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.peek() == Some(&Tok::Not) {
            self.pos += 1;
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), ExprError> {
        if self.peek() == Some(&tok) {
            self.pos += 1;
            Ok(())
        } else {
            Err(ExprError::new(self.offset(), format!("expected {what}")))
        }
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let at = self.offset();
        let Some((tok, _)) = self.toks.get(self.pos).cloned() else {
            return Err(ExprError::new(
                at,
                "expected a value, found end of expression",
            ));
        };
        self.pos += 1;
        match tok {
            Tok::Str(s) => Ok(Expr::Lit(Value::Str(s))),
            Tok::Num(n) => Ok(Expr::Lit(Value::Num(n))),
            Tok::LParen => {
                self.enter()?;
                let inner = self.or()?;
                self.expect(Tok::RParen, "`)` to close `(`")?;
                self.depth -= 1;
                Ok(inner)
            }
            Tok::Ident(name) => {
                if self.peek() == Some(&Tok::LParen) {
                    let func = Func::lookup(&name).ok_or_else(|| {
                        ExprError::new(
                            at,
                            format!(
                                "unknown function `{name}`; known functions: success, failure, always, cancelled, startsWith, endsWith, contains"
                            ),
                        )
                    })?;
                    self.pos += 1;
                    self.enter()?;
                    let mut args = Vec::new();
                    if self.peek() != Some(&Tok::RParen) {
                        args.push(self.or()?);
                        while self.peek() == Some(&Tok::Comma) {
                            self.pos += 1;
                            args.push(self.or()?);
                        }
                    }
                    self.expect(Tok::RParen, "`)` to close the argument list")?;
                    self.depth -= 1;
                    if args.len() != func.arity() {
                        return Err(ExprError::new(
                            at,
                            format!(
                                "`{name}` takes {} argument(s), got {}",
                                func.arity(),
                                args.len()
                            ),
                        ));
                    }
                    return Ok(Expr::Call { func, args });
                }
                match name.as_str() {
                    "true" => Ok(Expr::Lit(Value::Bool(true))),
                    "false" => Ok(Expr::Lit(Value::Bool(false))),
                    "null" => Ok(Expr::Lit(Value::Null)),
                    _ => match canonical_variable(&name) {
                        Some(name) => Ok(Expr::Var { name, offset: at }),
                        None => Err(ExprError::new(
                            at,
                            format!("unknown variable `{name}`; known: {KNOWN_VARIABLES}"),
                        )),
                    },
                }
            }
            other => Err(ExprError::new(
                at,
                format!("unexpected {}", describe(&other)),
            )),
        }
    }
}

fn describe(tok: &Tok) -> &'static str {
    match tok {
        Tok::RParen => "`)`",
        Tok::Comma => "`,`",
        Tok::And => "`&&`",
        Tok::Or => "`||`",
        Tok::EqEq => "`==`",
        Tok::NotEq => "`!=`",
        _ => "token",
    }
}

/// Parses a complete expression found at `base..base+src.len()` of the
/// caller's string.
fn parse_expr(src: &str, base: usize) -> Result<Expr, ExprError> {
    let toks = lex(src, base)?;
    if toks.is_empty() {
        return Err(ExprError::new(base, "empty expression"));
    }
    let mut p = ExprParser {
        toks,
        pos: 0,
        end: base + src.len(),
        depth: 0,
    };
    let expr = p.or()?;
    if p.pos < p.toks.len() {
        let at = p.offset();
        let what = p.peek().map_or("token", describe);
        return Err(ExprError::new(
            at,
            format!("unexpected {what} after a complete expression"),
        ));
    }
    Ok(expr)
}

/// A parsed `if:` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    source: String,
    expr: Expr,
}

impl Condition {
    /// Parses a condition, with or without a surrounding `${{ }}`.
    pub fn parse(src: &str) -> Result<Condition, ExprError> {
        let trimmed_start = src.len() - src.trim_start().len();
        let trimmed = src.trim();
        let (body, base) = match trimmed
            .strip_prefix("${{")
            .and_then(|rest| rest.strip_suffix("}}"))
        {
            // Only unwrap when the wrapper spans the whole string; otherwise
            // `${{ a }} && ${{ b }}` would be mangled.
            Some(inner) if !inner.contains("${{") => (inner, trimmed_start + 3),
            _ => (src, 0),
        };
        let expr = parse_expr(body, base)?;
        // Secrets are resolved on the worker at lease time; a condition is decided by
        // the server, which must never branch on them.
        if let Some((name, offset)) = expr
            .variables()
            .into_iter()
            .find(|(n, _)| n.starts_with("secrets."))
        {
            return Err(ExprError::new(offset, format!("unknown variable `{name}`")));
        }
        Ok(Condition {
            source: src.to_string(),
            expr,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn uses_status_function(&self) -> bool {
        self.expr.uses_status_function()
    }

    /// Canonical variable names referenced, with their byte offsets.
    pub fn variables(&self) -> Vec<(String, usize)> {
        self.expr.variables()
    }

    /// Truthiness of the expression exactly as written; no implicit
    /// `success()` is added here (see [`should_run`]).
    pub fn eval(&self, ctx: &EvalContext<'_>) -> bool {
        self.expr.eval(ctx).truthy()
    }
}

/// Decides whether a job runs, with GitHub's implicit-`success()` rule: a
/// condition that mentions no status function only applies once all needs
/// succeeded, and a missing condition means `success()`.
pub fn should_run(
    condition: Option<&str>,
    vars: &BTreeMap<String, String>,
    status: JobStatus,
) -> bool {
    let ctx = EvalContext { vars, status };
    let success = status.needs_all_succeeded && !status.run_cancelled;
    match condition {
        None => success,
        // Conditions were validated at parse time; anything unparseable here
        // came from a tampered spec and must not run.
        Some(src) => match Condition::parse(src) {
            Ok(cond) if cond.uses_status_function() => cond.eval(&ctx),
            Ok(cond) => success && cond.eval(&ctx),
            Err(_) => false,
        },
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Text(String),
    Expr(Expr),
}

/// Splits a string into literal text and `${{ }}` expressions. A `}}` inside
/// a quoted literal does not close the expression.
fn parse_template(src: &str) -> Result<Vec<Segment>, ExprError> {
    let mut segments = Vec::new();
    let mut rest_start = 0;
    while let Some(rel) = src[rest_start..].find("${{") {
        let open = rest_start + rel;
        if open > rest_start {
            segments.push(Segment::Text(src[rest_start..open].to_string()));
        }
        let body_start = open + 3;
        let mut quote: Option<char> = None;
        let mut close = None;
        let mut iter = src[body_start..].char_indices().peekable();
        while let Some((i, c)) = iter.next() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '\'' || c == '"' => quote = Some(c),
                None if c == '}' && iter.peek().map(|&(_, c)| c) == Some('}') => {
                    close = Some(body_start + i);
                    break;
                }
                None => {}
            }
        }
        let Some(close) = close else {
            return Err(ExprError::new(open, "unterminated `${{`: missing `}}`"));
        };
        let expr = parse_expr(&src[body_start..close], body_start)?;
        if expr.uses_status_function() {
            return Err(ExprError::new(
                open,
                "status functions can only be used in `if:` conditions",
            ));
        }
        segments.push(Segment::Expr(expr));
        rest_start = close + 2;
    }
    if rest_start < src.len() {
        segments.push(Segment::Text(src[rest_start..].to_string()));
    }
    Ok(segments)
}

/// Canonical variables referenced by `${{ }}` substitutions in `template`,
/// with byte offsets; also validates the syntax of every substitution.
pub fn template_variables(template: &str) -> Result<Vec<(String, usize)>, ExprError> {
    let mut out = Vec::new();
    for seg in parse_template(template)? {
        if let Segment::Expr(e) = seg {
            out.extend(e.variables());
        }
    }
    Ok(out)
}

/// What `${{ secrets.NAME }}` becomes when a run is planned: a marker that no user
/// input can contain (refs and shas refuse control characters), replaced by the
/// secret's value only when a worker leases the attempt. The stored spec never holds
/// a secret in clear.
pub fn secret_marker(name: &str) -> String {
    format!("{SECRET_MARK}secret:{name}{SECRET_MARK}")
}

const SECRET_MARK: char = '\u{1}';

/// Names of the secrets whose markers appear in `text`.
pub fn secret_markers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    let open = format!("{SECRET_MARK}secret:");
    while let Some(at) = rest.find(&open) {
        let after = &rest[at + open.len()..];
        let Some(end) = after.find(SECRET_MARK) else {
            break;
        };
        out.push(after[..end].to_owned());
        rest = &after[end + SECRET_MARK.len_utf8()..];
    }
    out
}

/// Replaces every secret marker in `text` with the secret's value (empty when it is
/// not defined, as in GitHub Actions).
pub fn resolve_secret_markers(text: &str, secrets: &BTreeMap<String, String>) -> String {
    if !text.contains(SECRET_MARK) {
        return text.to_owned();
    }
    let mut out = text.to_owned();
    for name in secret_markers(text) {
        let value = secrets.get(&name).map(String::as_str).unwrap_or("");
        out = out.replace(&secret_marker(&name), value);
    }
    out
}

/// Replaces every `${{ expr }}` in `template` with its value. Unlike
/// conditions, a variable missing from `vars` is an error: silently
/// substituting an empty string into a script hides mistakes.
pub fn substitute(template: &str, vars: &BTreeMap<String, String>) -> Result<String, ExprError> {
    if !template.contains("${{") {
        return Ok(template.to_string());
    }
    let ctx = EvalContext {
        vars,
        status: JobStatus::default(),
    };
    let mut out = String::with_capacity(template.len());
    for seg in parse_template(template)? {
        match seg {
            Segment::Text(t) => out.push_str(&t),
            Segment::Expr(e) => {
                if let Some((name, offset)) = e
                    .variables()
                    .into_iter()
                    .find(|(n, _)| !vars.contains_key(n))
                {
                    return Err(ExprError::new(offset, format!("unknown variable `{name}`")));
                }
                out.push_str(&e.eval(&ctx).into_text());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [
            ("ref", "refs/heads/main"),
            ("sha", "abc123"),
            ("repository", "acme/app"),
            ("run.number", "42"),
            ("matrix.shard", "2"),
            ("matrix.os", "Linux"),
            ("env.MODE", "release"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    const OK: JobStatus = JobStatus {
        needs_all_succeeded: true,
        needs_any_failed: false,
        run_cancelled: false,
    };
    const FAILED: JobStatus = JobStatus {
        needs_all_succeeded: false,
        needs_any_failed: true,
        run_cancelled: false,
    };
    const CANCELLED: JobStatus = JobStatus {
        needs_all_succeeded: true,
        needs_any_failed: false,
        run_cancelled: true,
    };

    #[test]
    fn conditions_table() {
        let v = vars();
        let table: &[(Option<&str>, JobStatus, bool)] = &[
            (None, OK, true),
            (None, FAILED, false),
            (None, CANCELLED, false),
            (Some("success()"), OK, true),
            (Some("failure()"), FAILED, true),
            (Some("failure()"), OK, false),
            (Some("always()"), FAILED, true),
            (Some("always()"), CANCELLED, true),
            (Some("cancelled()"), CANCELLED, true),
            (Some("cancelled()"), OK, false),
            (Some("ref == 'refs/heads/main'"), OK, true),
            (Some("ref == 'refs/heads/main'"), FAILED, false),
            (Some("${{ github.ref == 'REFS/HEADS/MAIN' }}"), OK, true),
            (Some("ref != 'refs/heads/main'"), OK, false),
            (Some("success() && ref == 'refs/heads/main'"), OK, true),
            (Some("startsWith(ref, 'refs/heads/')"), OK, true),
            (Some("endsWith(github.repository, '/app')"), OK, true),
            (Some("contains(sha, 'C12')"), OK, true),
            (Some("!contains(sha, 'zz')"), OK, true),
            (Some("matrix.shard == 2"), OK, true),
            (Some("matrix.shard == '2'"), OK, true),
            (
                Some("run.number == 42 && github.run_number != 41"),
                OK,
                true,
            ),
            (
                Some("(matrix.os == 'linux' || matrix.os == 'mac') && env.MODE == \"release\""),
                OK,
                true,
            ),
            (Some("failure() || cancelled()"), CANCELLED, true),
            (Some("!cancelled()"), FAILED, true),
            (Some("true"), OK, true),
            (Some("false"), OK, false),
            (Some("matrix.missing"), OK, false),
            (Some("'it''s' == \"it's\""), OK, true),
            (Some("no such thing ("), OK, false),
        ];
        for (cond, status, want) in table {
            assert_eq!(
                should_run(*cond, &v, *status),
                *want,
                "{cond:?} with {status:?}"
            );
        }
    }

    #[test]
    fn parse_errors_carry_offsets() {
        let e = Condition::parse("success() && nope()").unwrap_err();
        assert_eq!(e.offset, 13);
        assert!(e.message.contains("unknown function `nope`"), "{e}");
        let e = Condition::parse("(ref == 'x'").unwrap_err();
        assert!(e.message.contains("`)`"), "{e}");
        let e = Condition::parse("${{ secrets.TOKEN }}").unwrap_err();
        assert_eq!(e.offset, 4);
        assert!(e.message.contains("unknown variable `secrets.TOKEN`"));
        assert!(Condition::parse("a == b == c").is_err());
        assert!(Condition::parse("'open").is_err());
        assert!(Condition::parse("").is_err());
        assert!(Condition::parse("startsWith(ref)").is_err());
        let deep = format!("{}true{}", "(".repeat(100), ")".repeat(100));
        assert!(Condition::parse(&deep).is_err());
        let bangs = format!("{}true", "!".repeat(10_000));
        assert!(Condition::parse(&bangs).is_err());
        let long_and = vec!["true"; 10_000].join(" && ");
        assert!(Condition::parse(&long_and).is_ok());
    }

    #[test]
    fn status_detection() {
        assert!(Condition::parse("always()").unwrap().uses_status_function());
        assert!(
            Condition::parse("ref == 'x' || failure()")
                .unwrap()
                .uses_status_function()
        );
        assert!(
            !Condition::parse("ref == 'x'")
                .unwrap()
                .uses_status_function()
        );
    }

    #[test]
    fn substitution() {
        let v = vars();
        assert_eq!(
            substitute("./t.sh ${{ matrix.shard }} ${{github.sha}}", &v).unwrap(),
            "./t.sh 2 abc123"
        );
        assert_eq!(
            substitute("no exprs }} here", &v).unwrap(),
            "no exprs }} here"
        );
        assert_eq!(substitute("${{ '}}' }}", &v).unwrap(), "}}");
        assert_eq!(
            substitute("${{ ref == 'refs/heads/main' && 'prod' || 'dev' }}", &v).unwrap(),
            "prod"
        );
        let e = substitute("x ${{ matrix.nope }}", &v).unwrap_err();
        assert_eq!(e.offset, 6);
        let e = substitute("x ${{ ref", &v).unwrap_err();
        assert_eq!(e.offset, 2);
        assert!(substitute("${{ success() }}", &v).is_err());
        assert_eq!(
            template_variables("${{ env.A }}-${{ matrix.b }}").unwrap(),
            vec![("env.A".to_string(), 4), ("matrix.b".to_string(), 17)]
        );
    }

    fn fuzz_cases() -> u32 {
        std::env::var("GANTRY_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000)
    }

    const EXPR_PIECES: &[&str] = &[
        "${{",
        "}}",
        " ",
        "(",
        ")",
        "!",
        "&&",
        "||",
        "==",
        "!=",
        "<",
        ">=",
        "'",
        "\"",
        "a",
        "matrix.os",
        "env.X",
        "secrets.T",
        "github.ref",
        "success()",
        "failure()",
        "always()",
        "contains(",
        "startsWith(",
        ",",
        "1",
        "0.5",
        "true",
        "null",
        "'x'",
        "}",
        "{",
        "\u{1}",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(fuzz_cases()))]

        /// Fuzz target: conditions, templates and secret markers never panic on any text.
        #[test]
        fn expressions_never_panic(
            parts in proptest::collection::vec(proptest::sample::select(EXPR_PIECES), 0..40),
            raw in "\\PC{0,80}",
        ) {
            let v = vars();
            for text in [parts.concat(), raw] {
                if let Ok(c) = Condition::parse(&text) {
                    let _ = c.eval(&EvalContext { vars: &v, status: JobStatus::default() });
                }
                let _ = template_variables(&text);
                let _ = substitute(&text, &v);
                let names = secret_markers(&text);
                let resolved = resolve_secret_markers(&text, &BTreeMap::new());
                if names.is_empty() {
                    proptest::prop_assert_eq!(resolved, text.clone());
                }
            }
        }
    }
}
