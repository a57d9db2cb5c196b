//! HuJSON: JSON plus `//` and `/* */` comments and trailing commas, parsed into values that
//! remember where they started (line and column, both 1-based, columns in characters).
//!
//! Our own parser rather than a library's, because every later error (an unknown tag, a bad
//! port range) must name the place in the file, and every compiled rule carries its `file:line`.
//! Limits: [`MAX_BYTES`] for the whole input and [`MAX_DEPTH`] for nesting, so that no input
//! can exhaust memory or the stack. Duplicate object keys are refused (JSON leaves them
//! undefined; a policy must not mean two things).

use std::fmt;

/// The largest policy file accepted (1 MiB); larger inputs are refused before parsing.
pub const MAX_BYTES: usize = 1 << 20;
/// The deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 64;

/// A position in the source: 1-based line and column (column counted in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A parsed value and the position of its first character.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// Where the value starts.
    pub pos: Pos,
    /// What it is.
    pub kind: Kind,
}

/// The JSON kinds. Objects keep their members in file order.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number, exactly as serde_json reads it.
    Number(serde_json::Number),
    /// A string, escapes resolved.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object, members in file order (keys unique).
    Object(Vec<Member>),
}

/// One `"key": value` member of an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The key, escapes resolved.
    pub key: String,
    /// Where the key's opening quote is.
    pub key_pos: Pos,
    /// The value.
    pub value: Value,
}

/// A syntax error: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Where parsing stopped.
    pub pos: Pos,
    /// What was wrong, one line.
    pub msg: String,
}

impl Value {
    /// The plain JSON value (positions dropped).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.kind {
            Kind::Null => serde_json::Value::Null,
            Kind::Bool(b) => serde_json::Value::Bool(*b),
            Kind::Number(n) => serde_json::Value::Number(n.clone()),
            Kind::String(s) => serde_json::Value::String(s.clone()),
            Kind::Array(a) => serde_json::Value::Array(a.iter().map(Value::to_json).collect()),
            Kind::Object(m) => serde_json::Value::Object(
                m.iter()
                    .map(|m| (m.key.clone(), m.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// A short name of the kind, for messages ("a string", "an array").
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Number(_) => "a number",
            Kind::String(_) => "a string",
            Kind::Array(_) => "an array",
            Kind::Object(_) => "an object",
        }
    }
}

/// Parses raw bytes: refuses more than [`MAX_BYTES`] and invalid UTF-8 (with its position), then
/// parses as [`parse`] does.
pub fn parse_bytes(src: &[u8]) -> Result<Value, SyntaxError> {
    if src.len() > MAX_BYTES {
        return Err(SyntaxError {
            pos: Pos { line: 1, col: 1 },
            msg: format!(
                "the file is {} bytes; a policy file may be at most {MAX_BYTES} bytes (1 MiB)",
                src.len()
            ),
        });
    }
    match std::str::from_utf8(src) {
        Ok(s) => parse(s),
        Err(e) => {
            let good = &src[..e.valid_up_to()];
            let mut p = Parser::new(good);
            while p.bump().is_some() {}
            Err(p.err_here("invalid UTF-8 (a policy file is UTF-8 text)"))
        }
    }
}

/// Parses one HuJSON value (the whole input; only whitespace and comments may follow it).
pub fn parse(src: &str) -> Result<Value, SyntaxError> {
    if src.len() > MAX_BYTES {
        return parse_bytes(src.as_bytes());
    }
    let mut p = Parser::new(src.as_bytes());
    if src.starts_with('\u{feff}') {
        p.i = 3; // byte-order mark: not a character of the policy
    }
    let v = p.value()?;
    p.skip_ws()?;
    if p.peek().is_some() {
        return Err(p.err_here("unexpected text after the end of the value"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    line: u32,
    col: u32,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a [u8]) -> Self {
        Parser {
            s,
            i: 0,
            line: 1,
            col: 1,
            depth: 0,
        }
    }

    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            col: self.col,
        }
    }

    fn err_here(&self, msg: impl Into<String>) -> SyntaxError {
        SyntaxError {
            pos: self.pos(),
            msg: msg.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn peek2(&self) -> Option<u8> {
        self.s.get(self.i + 1).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = *self.s.get(self.i)?;
        self.i += 1;
        if b == b'\n' {
            self.line += 1;
            self.col = 1;
        } else if b & 0xC0 != 0x80 {
            // Not a UTF-8 continuation byte: a new character starts after this one.
            self.col += 1;
        }
        Some(b)
    }

    fn describe(&self) -> String {
        match self.peek() {
            None => "the end of the file".into(),
            Some(_) => {
                let rest = std::str::from_utf8(&self.s[self.i..]).unwrap_or("");
                match rest.chars().next() {
                    Some(c) if c.is_control() => format!("character U+{:04X}", c as u32),
                    Some(c) => format!("'{c}'"),
                    None => "an invalid character".into(),
                }
            }
        }
    }

    fn skip_ws(&mut self) -> Result<(), SyntaxError> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\n' | b'\r') => {
                    self.bump();
                }
                Some(b'/') => {
                    let start = self.pos();
                    match self.peek2() {
                        Some(b'/') => {
                            while let Some(b) = self.bump() {
                                if b == b'\n' {
                                    break;
                                }
                            }
                        }
                        Some(b'*') => {
                            self.bump();
                            self.bump();
                            loop {
                                match self.bump() {
                                    None => {
                                        return Err(SyntaxError {
                                            pos: start,
                                            msg: "unterminated /* comment".into(),
                                        })
                                    }
                                    Some(b'*') if self.peek() == Some(b'/') => {
                                        self.bump();
                                        break;
                                    }
                                    Some(_) => {}
                                }
                            }
                        }
                        _ => return Err(self.err_here("unexpected '/' (comments are // or /* */)")),
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self) -> Result<Value, SyntaxError> {
        self.skip_ws()?;
        let pos = self.pos();
        let kind = match self.peek() {
            Some(b'{') => self.object()?,
            Some(b'[') => self.array()?,
            Some(b'"') => Kind::String(self.string()?),
            Some(b't') => self.literal("true", Kind::Bool(true))?,
            Some(b'f') => self.literal("false", Kind::Bool(false))?,
            Some(b'n') => self.literal("null", Kind::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => return Err(self.err_here(format!("expected a value, found {}", self.describe()))),
        };
        Ok(Value { pos, kind })
    }

    fn enter(&mut self) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err_here(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn object(&mut self) -> Result<Kind, SyntaxError> {
        self.enter()?;
        self.bump(); // '{'
        let mut members: Vec<Member> = Vec::new();
        loop {
            self.skip_ws()?;
            match self.peek() {
                Some(b'}') => {
                    self.bump();
                    break;
                }
                Some(b'"') => {}
                _ => {
                    return Err(self.err_here(format!(
                        "expected a \"key\" or '}}', found {}",
                        self.describe()
                    )))
                }
            }
            let key_pos = self.pos();
            let key = self.string()?;
            if members.iter().any(|m| m.key == key) {
                return Err(SyntaxError {
                    pos: key_pos,
                    msg: format!("duplicate key {key:?}"),
                });
            }
            self.skip_ws()?;
            if self.peek() != Some(b':') {
                return Err(self.err_here(format!(
                    "expected ':' after the key, found {}",
                    self.describe()
                )));
            }
            self.bump();
            let value = self.value()?;
            members.push(Member {
                key,
                key_pos,
                value,
            });
            self.skip_ws()?;
            match self.peek() {
                Some(b',') => {
                    self.bump();
                }
                Some(b'}') => {
                    self.bump();
                    break;
                }
                _ => {
                    return Err(
                        self.err_here(format!("expected ',' or '}}', found {}", self.describe()))
                    )
                }
            }
        }
        self.depth -= 1;
        Ok(Kind::Object(members))
    }

    fn array(&mut self) -> Result<Kind, SyntaxError> {
        self.enter()?;
        self.bump(); // '['
        let mut items = Vec::new();
        loop {
            self.skip_ws()?;
            if self.peek() == Some(b']') {
                self.bump();
                break;
            }
            items.push(self.value()?);
            self.skip_ws()?;
            match self.peek() {
                Some(b',') => {
                    self.bump();
                }
                Some(b']') => {
                    self.bump();
                    break;
                }
                _ => {
                    return Err(
                        self.err_here(format!("expected ',' or ']', found {}", self.describe()))
                    )
                }
            }
        }
        self.depth -= 1;
        Ok(Kind::Array(items))
    }

    fn literal(&mut self, word: &str, kind: Kind) -> Result<Kind, SyntaxError> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            for _ in 0..word.len() {
                self.bump();
            }
            if matches!(self.peek(), Some(b) if b.is_ascii_alphanumeric() || b == b'_') {
                return Err(self.err_here(format!("unexpected text after `{word}`")));
            }
            Ok(kind)
        } else {
            Err(self.err_here(format!(
                "expected a value, found {} (strings need \"quotes\")",
                self.describe()
            )))
        }
    }

    fn number(&mut self) -> Result<Kind, SyntaxError> {
        let start_pos = self.pos();
        let start = self.i;
        let bad = |p: &Self| p.err_here("malformed number");
        if self.peek() == Some(b'-') {
            self.bump();
        }
        match self.peek() {
            Some(b'0') => {
                self.bump();
            }
            Some(b'1'..=b'9') => {
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.bump();
                }
            }
            _ => return Err(bad(self)),
        }
        if self.peek() == Some(b'.') {
            self.bump();
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(bad(self));
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.bump();
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.bump();
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.bump();
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(bad(self));
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.bump();
            }
        }
        if matches!(self.peek(), Some(b) if b.is_ascii_alphanumeric() || b == b'.') {
            return Err(bad(self));
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| bad(self))?;
        // Integers exactly when they fit; everything else through std's correctly rounded
        // float parser (so a printed f64 reads back bit for bit).
        let is_int = !text.contains(['.', 'e', 'E']);
        let n = if let (true, Ok(u)) = (is_int, text.parse::<u64>()) {
            Some(serde_json::Number::from(u))
        } else if let (true, Ok(i)) = (is_int, text.parse::<i64>()) {
            Some(serde_json::Number::from(i))
        } else {
            text.parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
        };
        n.map(Kind::Number).ok_or_else(|| SyntaxError {
            pos: start_pos,
            msg: format!("number {text} is out of range"),
        })
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(b) if b.is_ascii_hexdigit() => (b as char).to_digit(16).unwrap_or(0),
                _ => return Err(self.err_here("\\u needs four hex digits")),
            };
            self.bump();
            v = v * 16 + d;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let start = self.pos();
        self.bump(); // '"'
        let mut out: Vec<u8> = Vec::new();
        loop {
            let here = self.pos();
            match self.bump() {
                None => {
                    return Err(SyntaxError {
                        pos: start,
                        msg: "unterminated string".into(),
                    })
                }
                Some(b'"') => break,
                Some(b'\\') => {
                    let c = match self.bump() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if self.peek() != Some(b'\\') || self.peek2() != Some(b'u') {
                                    return Err(SyntaxError {
                                        pos: here,
                                        msg: "lone surrogate in \\u escape".into(),
                                    });
                                }
                                self.bump();
                                self.bump();
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(SyntaxError {
                                        pos: here,
                                        msg: "lone surrogate in \\u escape".into(),
                                    });
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(cp).ok_or_else(|| SyntaxError {
                                pos: here,
                                msg: "lone surrogate in \\u escape".into(),
                            })?
                        }
                        _ => {
                            return Err(SyntaxError {
                                pos: here,
                                msg: "unknown escape (use \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)"
                                    .into(),
                            })
                        }
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                Some(b) if b < 0x20 => {
                    return Err(SyntaxError {
                        pos: here,
                        msg: "control character in a string (write it as an escape; strings end on the same line)".into(),
                    })
                }
                Some(b) => out.push(b),
            }
        }
        // Only whole characters of valid UTF-8 input and encoded chars were copied.
        String::from_utf8(out).map_err(|_| SyntaxError {
            pos: start,
            msg: "invalid UTF-8 in a string".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> (u32, u32, String) {
        let e = parse(src).expect_err("must fail");
        (e.pos.line, e.pos.col, e.msg)
    }

    #[test]
    fn comments_and_trailing_commas() {
        let v = parse(
            "// head\n{\n  \"a\": [1, 2, /* two */ 3,],\n  /* block\n  */ \"b\": {\"c\": null,}, // tail\n}\n",
        )
        .unwrap();
        assert_eq!(
            v.to_json(),
            serde_json::json!({"a": [1, 2, 3], "b": {"c": null}})
        );
    }

    #[test]
    fn positions_are_line_and_character_column() {
        let v = parse("{\n  \"ü\": \"x\",\n  \"k\": [true]\n}").unwrap();
        let Kind::Object(m) = &v.kind else { panic!() };
        assert_eq!(m[0].key_pos, Pos { line: 2, col: 3 });
        assert_eq!(m[0].value.pos, Pos { line: 2, col: 8 });
        let Kind::Array(a) = &m[1].value.kind else {
            panic!()
        };
        assert_eq!(a[0].pos, Pos { line: 3, col: 9 });
    }

    #[test]
    fn error_positions() {
        assert_eq!(err("{\n  \"a\": 1\n  \"b\": 2\n}").0, 3);
        let (l, c, m) = err("{\"a\": [1, 2,, 3]}");
        assert_eq!((l, c), (1, 13), "{m}");
        let (l, c, m) = err("{\n  \"a\": /* never closed\n");
        assert_eq!((l, c), (2, 8));
        assert!(m.contains("unterminated /*"), "{m}");
        let (l, c, m) = err("{\"a\": tru}");
        assert_eq!((l, c), (1, 7), "{m}");
        let (_, _, m) = err("{\"a\": 1, \"a\": 2}");
        assert!(m.contains("duplicate key"), "{m}");
        let (_, _, m) = err("{,}");
        assert!(m.contains("expected a \"key\""), "{m}");
        let (l, c, m) = err("[1] x");
        assert_eq!((l, c), (1, 5), "{m}");
        let (_, _, m) = err("\"abc");
        assert!(m.contains("unterminated string"), "{m}");
        let (_, _, m) = err("[01]");
        assert!(m.contains("malformed number"), "{m}");
        let (_, _, m) = err("/ x");
        assert!(m.contains("comments are"), "{m}");
        assert!(parse("").is_err());
    }

    #[test]
    fn escapes() {
        let v = parse(r#""a\n\u00e9\ud83d\ude00\/""#).unwrap();
        assert_eq!(v.kind, Kind::String("a\né😀/".into()));
        assert!(err(r#""\ud83d""#).2.contains("lone surrogate"));
        assert!(err(r#""\q""#).2.contains("unknown escape"));
        assert!(err("\"a\nb\"").2.contains("control character"));
    }

    #[test]
    fn limits() {
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert!(err(&deep).2.contains("nested deeper"));
        let ten_mb = vec![b' '; 10 * 1000 * 1000];
        let e = parse_bytes(&ten_mb).unwrap_err();
        assert!(e.msg.contains("at most 1048576 bytes"), "{}", e.msg);
        let e = parse_bytes(b"{\"a\": \"\xff\"}").unwrap_err();
        assert_eq!((e.pos.col, e.msg.contains("UTF-8")), (8, true));
    }
}
