//! A hand-written lexer and recursive-descent parser for the filter language.
//!
//! Precedence, tightest first: `!`, `+` and `-` (times and durations), comparisons (`==`
//! `!=` `<` `<=` `>` `>=` `in` `contains`), `&&`, `||`. A name followed by `(` calls a built-in
//! function (`size(data.tags)`). Comparisons do not chain: `a == b == c` is an error. Every error carries the
//! 1-based column (in characters) where it was found.

use super::ast::{ArithOp, CmpOp, Expr, Func, Path, SortKey};
use super::functions;
use serde_json::Value;

/// Which names an expression may start a path with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// A filter over a document envelope: `id`, `owner`, `version`, `created_at`, `updated_at`,
    /// `data.<field>...`.
    Document,
    /// An access rule: `auth`, `doc` (an envelope), `request.data`.
    Rule,
    /// A bucket's access rule: `auth`, `file` (stored metadata, or null), `request.size`,
    /// `request.content_type`, `request.path`.
    FileRule,
    /// A trigger's `when`: `before` and `after`, the document (or file) as a change leaves and
    /// finds it, each null when absent.
    Trigger,
}

/// The deepest nesting of parentheses, `!` and array literals accepted, so that hostile input
/// cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

/// The most comparisons and values an expression may hold, so that one rule or filter cannot
/// cost unbounded work per document it is evaluated against.
pub(crate) const MAX_TERMS: usize = 1000;

const ENVELOPE_FIELDS: [&str; 5] = ["id", "owner", "version", "created_at", "updated_at"];

const FILE_FIELDS: [&str; 8] = [
    "bucket",
    "path",
    "size",
    "content_type",
    "sha256",
    "owner",
    "created_at",
    "updated_at",
];

const FILE_REQUEST_FIELDS: [&str; 3] = ["size", "content_type", "path"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at column {column}")]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Op(&'static str),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Eof,
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    src: &'a str,
    /// After a `.`, a run of digits is a field name (an array index), not a number.
    after_dot: bool,
    /// After a value (a name, a literal, `)` or `]`), `-` is the minus operator, not a sign.
    after_value: bool,
}

/// Characters before `byte` plus one: the column a person would count.
fn column_of(src: &str, byte: usize) -> usize {
    src[..byte.min(src.len())].chars().count() + 1
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Lexer {
            chars: src.char_indices().peekable(),
            src,
            after_dot: false,
            after_value: false,
        }
    }

    fn err(&self, byte: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            column: column_of(self.src, byte),
            message: message.into(),
        }
    }

    fn tokens(mut self) -> Result<Vec<(Tok, usize)>, ParseError> {
        let mut out = Vec::new();
        loop {
            let (tok, at) = self.next_token()?;
            self.after_dot = tok == Tok::Dot;
            self.after_value = matches!(
                tok,
                Tok::Ident(_) | Tok::Str(_) | Tok::Num(_) | Tok::RParen | Tok::RBracket
            );
            let end = tok == Tok::Eof;
            out.push((tok, column_of(self.src, at)));
            if end {
                return Ok(out);
            }
        }
    }

    fn next_token(&mut self) -> Result<(Tok, usize), ParseError> {
        while let Some(&(_, c)) = self.chars.peek() {
            if c.is_whitespace() {
                self.chars.next();
            } else {
                break;
            }
        }
        let Some((at, c)) = self.chars.next() else {
            return Ok((Tok::Eof, self.src.len()));
        };
        let two =
            |lexer: &mut Self, second: char, both: &'static str, one: Option<&'static str>| {
                if lexer.chars.peek().map(|&(_, n)| n) == Some(second) {
                    lexer.chars.next();
                    Ok(Tok::Op(both))
                } else {
                    one.map(Tok::Op)
                        .ok_or_else(|| lexer.err(at, format!("expected `{both}`")))
                }
            };
        let tok = match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            ',' => Tok::Comma,
            '.' => Tok::Dot,
            '=' => two(self, '=', "==", None)?,
            '!' => two(self, '=', "!=", Some("!"))?,
            '<' => two(self, '=', "<=", Some("<"))?,
            '>' => two(self, '=', ">=", Some(">"))?,
            '&' => two(self, '&', "&&", None)?,
            '|' => two(self, '|', "||", None)?,
            '"' => self.string(at)?,
            '+' => Tok::Op("+"),
            '-' if self.after_value => Tok::Op("-"),
            '-' | '0'..='9' if !self.after_dot => self.number(at)?,
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let mut end = at + c.len_utf8();
                while let Some(&(i, n)) = self.chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '_' {
                        end = i + n.len_utf8();
                        self.chars.next();
                    } else {
                        break;
                    }
                }
                Tok::Ident(self.src[at..end].to_string())
            }
            other => return Err(self.err(at, format!("unexpected character `{other}`"))),
        };
        Ok((tok, at))
    }

    /// A JSON string literal, decoded with serde_json so escapes mean exactly what they mean in
    /// JSON.
    fn string(&mut self, start: usize) -> Result<Tok, ParseError> {
        let mut escaped = false;
        for (i, c) in self.chars.by_ref() {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                let raw = &self.src[start..=i];
                return serde_json::from_str::<String>(raw)
                    .map(Tok::Str)
                    .map_err(|e| ParseError {
                        column: column_of(self.src, start),
                        message: format!("invalid string literal: {e}"),
                    });
            }
        }
        Err(self.err(start, "unterminated string literal"))
    }

    /// A JSON number literal (an optional leading `-`).
    fn number(&mut self, start: usize) -> Result<Tok, ParseError> {
        let mut end = start + 1;
        while let Some(&(i, c)) = self.chars.peek() {
            if c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-') {
                end = i + 1;
                self.chars.next();
            } else {
                break;
            }
        }
        let raw = &self.src[start..end];
        match serde_json::from_str::<serde_json::Number>(raw) {
            Ok(n) => match n.as_f64() {
                Some(f) if f.is_finite() => Ok(Tok::Num(raw.to_string())),
                _ => Err(self.err(start, format!("number out of range `{raw}`"))),
            },
            Err(e) if e.to_string().contains("out of range") => {
                Err(self.err(start, format!("number out of range `{raw}`")))
            }
            Err(_) => Err(self.err(start, format!("invalid number `{raw}`"))),
        }
    }
}

/// The string of a literal argument, if it is one.
fn literal_string(arg: Option<&Expr>) -> Option<&str> {
    match arg {
        Some(Expr::Literal(Value::String(s))) => Some(s),
        _ => None,
    }
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
    /// Values and names read so far (checked against `MAX_TERMS`).
    terms: usize,
    dialect: Dialect,
}

impl Parser {
    fn peek(&self) -> &Tok {
        self.toks.get(self.pos).map(|(t, _)| t).unwrap_or(&Tok::Eof)
    }

    fn column(&self) -> usize {
        self.toks
            .get(self.pos)
            .or(self.toks.last())
            .map(|(_, c)| *c)
            .unwrap_or(1)
    }

    fn bump(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.pos < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            column: self.column(),
            message: message.into(),
        })
    }

    fn describe(tok: &Tok) -> String {
        match tok {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Num(raw) => format!("number `{raw}`"),
            Tok::Op(op) => format!("`{op}`"),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Dot => "`.`".into(),
            Tok::Eof => "end of input".into(),
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err(format!("expression nested deeper than {MAX_DEPTH}"));
        }
        Ok(())
    }

    /// `a || b || c` as one node with three operands: a chain is as deep as one operator,
    /// however long it is.
    fn or(&mut self) -> Result<Expr, ParseError> {
        let first = self.and()?;
        if self.peek() != &Tok::Op("||") {
            return Ok(first);
        }
        let mut operands = vec![first];
        while self.peek() == &Tok::Op("||") {
            self.bump();
            operands.push(self.and()?);
        }
        Ok(Expr::Or(operands))
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let first = self.comparison()?;
        if self.peek() != &Tok::Op("&&") {
            return Ok(first);
        }
        let mut operands = vec![first];
        while self.peek() == &Tok::Op("&&") {
            self.bump();
            operands.push(self.comparison()?);
        }
        Ok(Expr::And(operands))
    }

    fn comparison_op(&self) -> Option<CmpOp> {
        Some(match self.peek() {
            Tok::Op("==") => CmpOp::Eq,
            Tok::Op("!=") => CmpOp::Ne,
            Tok::Op("<") => CmpOp::Lt,
            Tok::Op("<=") => CmpOp::Le,
            Tok::Op(">") => CmpOp::Gt,
            Tok::Op(">=") => CmpOp::Ge,
            Tok::Ident(w) if w == "in" => CmpOp::In,
            Tok::Ident(w) if w == "contains" => CmpOp::Contains,
            _ => return None,
        })
    }

    fn comparison(&mut self) -> Result<Expr, ParseError> {
        let left = self.additive()?;
        let Some(op) = self.comparison_op() else {
            return Ok(left);
        };
        self.bump();
        let right = self.additive()?;
        if self.comparison_op().is_some() {
            return self.err("comparisons do not chain; use parentheses and `&&`");
        }
        Ok(Expr::Compare(Box::new(left), op, Box::new(right)))
    }

    /// `a + b - c`, left to right (times and durations).
    fn additive(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Op("+") => ArithOp::Add,
                Tok::Op("-") => ArithOp::Sub,
                _ => return Ok(left),
            };
            self.bump();
            self.enter()?;
            let right = self.unary()?;
            self.depth -= 1;
            left = Expr::Arith(Box::new(left), op, Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.peek() == &Tok::Op("!") {
            self.bump();
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let column = self.column();
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return self.err(format!("expression has more than {MAX_TERMS} terms"));
        }
        match self.bump() {
            Tok::LParen => {
                self.enter()?;
                let inner = self.or()?;
                self.depth -= 1;
                if self.bump() != Tok::RParen {
                    self.pos -= 1;
                    return self.err("expected `)`");
                }
                Ok(inner)
            }
            Tok::LBracket => {
                self.pos -= 1;
                self.array().map(Expr::Literal)
            }
            Tok::Str(s) => Ok(Expr::Literal(Value::String(s))),
            Tok::Num(raw) => Ok(Expr::Literal(number_value(&raw))),
            Tok::Ident(word) => match word.as_str() {
                "true" => Ok(Expr::Literal(Value::Bool(true))),
                "false" => Ok(Expr::Literal(Value::Bool(false))),
                "null" => Ok(Expr::Literal(Value::Null)),
                _ if self.peek() == &Tok::LParen => self.call(&word, column),
                _ => {
                    self.pos -= 1;
                    let path = self.path()?;
                    check_root(&path, self.dialect, column)?;
                    Ok(Expr::Path(path))
                }
            },
            other => {
                self.pos -= 1;
                self.err(format!(
                    "expected a value or a name, found {}",
                    Self::describe(&other)
                ))
            }
        }
    }

    /// A call of the function `name` (its `(` next), with its arguments checked.
    fn call(&mut self, name: &str, column: usize) -> Result<Expr, ParseError> {
        let at = |message: String| ParseError { column, message };
        self.bump();
        self.enter()?;
        let mut args = Vec::new();
        if self.peek() == &Tok::RParen {
            self.bump();
        } else {
            loop {
                args.push(self.or()?);
                match self.bump() {
                    Tok::Comma => continue,
                    Tok::RParen => break,
                    other => {
                        self.pos -= 1;
                        return self.err(format!(
                            "expected `,` or `)` in the arguments of {name}, found {}",
                            Self::describe(&other)
                        ));
                    }
                }
            }
        }
        self.depth -= 1;
        let (func, arity) = match name {
            "size" => (Func::Size, 1),
            "startsWith" => (Func::StartsWith, 2),
            "endsWith" => (Func::EndsWith, 2),
            "lower" => (Func::Lower, 1),
            "upper" => (Func::Upper, 1),
            "has" => (Func::Has, 2),
            "keys" => (Func::Keys, 1),
            "type" => (Func::Type, 1),
            "now" => (Func::Now, 0),
            "time" => (Func::Time, 1),
            "matches" => {
                let pattern = literal_string(args.get(1)).ok_or_else(|| {
                    at("matches(x, \"pattern\") takes its pattern as a string literal".into())
                })?;
                (Func::Matches(functions::regex(pattern).map_err(at)?), 2)
            }
            "duration" => {
                let text = literal_string(args.first())
                    .ok_or_else(|| at("duration(\"P7D\") takes a string literal".into()))?;
                (Func::Duration(functions::duration(text).map_err(at)?), 1)
            }
            "changed" => {
                if self.dialect != Dialect::Rule {
                    return Err(at("changed() is only for collection rules".into()));
                }
                let field = literal_string(args.first())
                    .and_then(|f| f.strip_prefix("data."))
                    .filter(|f| !f.is_empty())
                    .ok_or_else(|| {
                        at(
                            "changed(\"data.field\") takes a field of data as a string literal"
                                .into(),
                        )
                    })?;
                let segments = field.split('.').map(str::to_string).collect();
                (Func::Changed(segments), 1)
            }
            other => return Err(at(format!("unknown function `{other}`"))),
        };
        if args.len() != arity {
            return Err(at(format!(
                "{name} takes {arity} argument{}, not {}",
                if arity == 1 { "" } else { "s" },
                args.len()
            )));
        }
        if matches!(func, Func::Duration(_) | Func::Changed(_)) {
            args.clear();
        } else if let Func::Matches(_) = func {
            args.truncate(1);
        }
        Ok(Expr::Call(func, args))
    }

    fn path(&mut self) -> Result<Path, ParseError> {
        let mut segments = Vec::new();
        loop {
            match self.bump() {
                Tok::Ident(s) => segments.push(s),
                other => {
                    self.pos -= 1;
                    return self.err(format!(
                        "expected a field name, found {}",
                        Self::describe(&other)
                    ));
                }
            }
            if self.peek() != &Tok::Dot {
                return Ok(Path { segments });
            }
            self.bump();
        }
    }

    fn array(&mut self) -> Result<Value, ParseError> {
        self.bump();
        self.enter()?;
        let mut items = Vec::new();
        if self.peek() == &Tok::RBracket {
            self.bump();
            self.depth -= 1;
            return Ok(Value::Array(items));
        }
        loop {
            let item = match self.bump() {
                Tok::Str(s) => Value::String(s),
                Tok::Num(raw) => number_value(&raw),
                Tok::Ident(w) if w == "true" => Value::Bool(true),
                Tok::Ident(w) if w == "false" => Value::Bool(false),
                Tok::Ident(w) if w == "null" => Value::Null,
                Tok::LBracket => {
                    self.pos -= 1;
                    self.array()?
                }
                other => {
                    self.pos -= 1;
                    return self.err(format!(
                        "array literals hold only literals, found {}",
                        Self::describe(&other)
                    ));
                }
            };
            items.push(item);
            match self.bump() {
                Tok::Comma => continue,
                Tok::RBracket => break,
                other => {
                    self.pos -= 1;
                    return self.err(format!(
                        "expected `,` or `]`, found {}",
                        Self::describe(&other)
                    ));
                }
            }
        }
        self.depth -= 1;
        Ok(Value::Array(items))
    }
}

fn number_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or(Value::Null)
}

/// Checks that a path names something the dialect binds.
fn check_root(path: &Path, dialect: Dialect, column: usize) -> Result<(), ParseError> {
    let err = |message: String| Err(ParseError { column, message });
    match dialect {
        Dialect::Document => check_envelope_path(&path.segments, column),
        Dialect::Rule => match path.root() {
            "auth" => Ok(()),
            // `doc` alone is the whole envelope, null when the document does not exist.
            "doc" if path.segments.len() == 1 => Ok(()),
            "doc" => check_envelope_path(&path.segments[1..], column),
            "request" if path.segments.get(1).map(String::as_str) == Some("data") => Ok(()),
            _ => err(format!(
                "unknown name `{path}`; rules may use `auth`, `doc` and `request.data`"
            )),
        },
        Dialect::FileRule => {
            let field = |allowed: &[&str]| match &path.segments[1..] {
                [one] => allowed.contains(&one.as_str()),
                _ => false,
            };
            let ok = match path.root() {
                "auth" => true,
                "file" => path.segments.len() == 1 || field(&FILE_FIELDS),
                "request" => field(&FILE_REQUEST_FIELDS),
                _ => false,
            };
            if ok {
                Ok(())
            } else {
                err(format!(
                    "unknown name `{path}`; bucket rules may use `auth`, `file`, `file.<{}>` and `request.<{}>`",
                    FILE_FIELDS.join("|"),
                    FILE_REQUEST_FIELDS.join("|")
                ))
            }
        }
        Dialect::Trigger => match path.root() {
            "before" | "after" => Ok(()),
            _ => err(format!(
                "unknown name `{path}`; a trigger's `when` may use `before` and `after`"
            )),
        },
    }
}

fn check_envelope_path(segments: &[String], column: usize) -> Result<(), ParseError> {
    let ok = match segments {
        [one] => ENVELOPE_FIELDS.contains(&one.as_str()),
        [data, _, ..] => data == "data",
        [] => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ParseError {
            column,
            message: format!(
                "unknown field `{}`; use id, owner, version, created_at, updated_at or data.<field>",
                segments.join(".")
            ),
        })
    }
}

/// Parses a complete expression.
pub(crate) fn parse_expr(src: &str, dialect: Dialect) -> Result<Expr, ParseError> {
    let toks = Lexer::new(src).tokens()?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
        terms: 0,
        dialect,
    };
    if p.peek() == &Tok::Eof {
        return p.err("empty expression");
    }
    let expr = p.or()?;
    if p.peek() != &Tok::Eof {
        let found = Parser::describe(p.peek());
        return p.err(format!("unexpected {found}"));
    }
    Ok(expr)
}

/// Parses a document path such as `data.n` or `created_at` (index fields).
pub(crate) fn parse_path(src: &str) -> Result<Path, ParseError> {
    match parse_expr(src, Dialect::Document)? {
        Expr::Path(p) => Ok(p),
        _ => Err(ParseError {
            column: 1,
            message: format!("`{src}` is not a field path"),
        }),
    }
}

/// Parses a sort specification: a comma list of paths, each optionally prefixed with `-`.
pub(crate) fn parse_sort(src: &str) -> Result<Vec<SortKey>, ParseError> {
    let mut keys = Vec::new();
    let mut offset = 0;
    for part in src.split(',') {
        let (descending, body) = match part.trim_start().strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (
                false,
                part.trim_start()
                    .strip_prefix('+')
                    .unwrap_or(part.trim_start()),
            ),
        };
        let name = body.trim();
        let name_at = offset + (part.len() - body.len()) + (body.len() - body.trim_start().len());
        let path = parse_path(name).map_err(|e| ParseError {
            column: column_of(src, name_at) + e.column - 1,
            message: e.message,
        })?;
        keys.push(SortKey { path, descending });
        offset += part.len() + 1;
    }
    Ok(keys)
}
