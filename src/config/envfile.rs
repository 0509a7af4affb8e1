//! The env file: systemd `EnvironmentFile=` syntax.
//!
//! What systemd accepts, we accept: blank lines; comments starting with `#` or
//! `;` (after optional white space); `KEY=VALUE` with white space around the key
//! and at the ends of an unquoted value trimmed; values in double quotes (with
//! `\"`, `\\`, `\$`, `` \` `` and `\n` escapes and line continuation) or in
//! single quotes (literal); a trailing backslash continues an unquoted value on
//! the next line; an optional leading `export `. A `#` inside a value is part of
//! the value, as in systemd.

use std::collections::BTreeMap;

/// One problem in the env file, with its line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// A parsed assignment: the value and the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub value: String,
    pub line: usize,
}

/// Parses env file text. Returns every assignment (the last one wins for a key
/// that repeats, as in systemd) and every syntax error; a bad line never hides
/// the lines after it (except an unterminated quote, which swallows the rest).
pub fn parse(text: &str) -> (BTreeMap<String, Assignment>, Vec<SyntaxError>) {
    let mut p = Parser {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
    };
    let mut vars = BTreeMap::new();
    let mut errors = Vec::new();
    while p.pos < p.chars.len() {
        p.skip_blanks();
        match p.peek() {
            None => break,
            Some('\n') => {
                p.bump();
                continue;
            }
            Some('#' | ';') => {
                p.skip_line();
                continue;
            }
            Some(_) => {}
        }
        let line = p.line;
        let mut key = p.take_while(|c| c != '=' && c != '\n');
        if p.peek() != Some('=') {
            errors.push(SyntaxError {
                line,
                reason: "expected KEY=VALUE".into(),
            });
            p.skip_line();
            continue;
        }
        p.bump();
        if let Some(stripped) = key.strip_prefix("export ") {
            key = stripped.to_string();
        }
        let key = key.trim().to_string();
        if !valid_name(&key) {
            errors.push(SyntaxError {
                line,
                reason: format!("{key:?} is not a valid variable name"),
            });
            p.skip_line();
            continue;
        }
        match p.value() {
            Ok(value) => {
                vars.insert(key, Assignment { value, line });
            }
            Err(reason) => {
                errors.push(SyntaxError {
                    line,
                    reason: format!("{key}: {reason}"),
                });
                p.skip_line();
            }
        }
    }
    (vars, errors)
}

fn valid_name(key: &str) -> bool {
    !key.is_empty()
        && !key.as_bytes()[0].is_ascii_digit()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    line: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\r')) {
            self.bump();
        }
    }

    fn skip_line(&mut self) {
        while let Some(c) = self.bump() {
            if c == '\n' {
                break;
            }
        }
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if !keep(c) {
                break;
            }
            out.push(c);
            self.bump();
        }
        out
    }

    /// The value after `=`, up to the end of its (logical) line.
    fn value(&mut self) -> Result<String, String> {
        self.skip_blanks();
        let mut out = String::new();
        let mut pending = String::new();
        while let Some(c) = self.bump() {
            match c {
                '\n' => break,
                '\r' if self.peek() == Some('\n') || self.peek().is_none() => {}
                '\\' => match self.bump() {
                    Some('\n') => self.skip_blanks(),
                    Some('\r') if self.peek() == Some('\n') => {
                        self.bump();
                        self.skip_blanks();
                    }
                    Some(e) => {
                        out.push_str(&std::mem::take(&mut pending));
                        out.push(e);
                    }
                    None => {}
                },
                '"' => {
                    out.push_str(&std::mem::take(&mut pending));
                    self.double_quoted(&mut out)?;
                }
                '\'' => {
                    out.push_str(&std::mem::take(&mut pending));
                    self.single_quoted(&mut out)?;
                }
                ' ' | '\t' => pending.push(c),
                c => {
                    out.push_str(&std::mem::take(&mut pending));
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    fn double_quoted(&mut self, out: &mut String) -> Result<(), String> {
        loop {
            match self.bump() {
                None => return Err("unterminated double quote".into()),
                Some('"') => return Ok(()),
                Some('\\') => match self.bump() {
                    None => return Err("unterminated double quote".into()),
                    Some('\n') => {}
                    Some('n') => out.push('\n'),
                    Some(e @ ('"' | '\\' | '$' | '`')) => out.push(e),
                    Some(other) => {
                        out.push('\\');
                        out.push(other);
                    }
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn single_quoted(&mut self, out: &mut String) -> Result<(), String> {
        loop {
            match self.bump() {
                None => return Err("unterminated single quote".into()),
                Some('\'') => return Ok(()),
                Some(c) => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> BTreeMap<String, String> {
        let (vars, errors) = parse(text);
        assert!(errors.is_empty(), "{errors:?}");
        vars.into_iter().map(|(k, a)| (k, a.value)).collect()
    }

    #[test]
    fn systemd_syntax() {
        let v = values(
            "# comment\n; also a comment\n\n  NP_A=plain value  \nNP_B=\"quoted # not a comment\"\n\
             NP_C='single $literal \\n'\nexport NP_D=exported\nNP_E = spaced\nNP_F=\"esc \\\"q\\\" \\\\ \\$x\"\n\
             NP_G=a\\\n   b\nNP_H=\nNP_I=x#y\r\nNP_J=\"multi\nline\"\n",
        );
        assert_eq!(v["NP_A"], "plain value");
        assert_eq!(v["NP_B"], "quoted # not a comment");
        assert_eq!(v["NP_C"], "single $literal \\n");
        assert_eq!(v["NP_D"], "exported");
        assert_eq!(v["NP_E"], "spaced");
        assert_eq!(v["NP_F"], "esc \"q\" \\ $x");
        assert_eq!(v["NP_G"], "ab");
        assert_eq!(v["NP_H"], "");
        assert_eq!(v["NP_I"], "x#y");
        assert_eq!(v["NP_J"], "multi\nline");
    }

    #[test]
    fn last_assignment_wins_and_lines_are_tracked() {
        let (vars, _) = parse("NP_A=1\n\nNP_A=2\n");
        assert_eq!(vars["NP_A"].value, "2");
        assert_eq!(vars["NP_A"].line, 3);
    }

    #[test]
    fn every_bad_line_is_reported_and_parsing_goes_on() {
        let (vars, errors) = parse("garbage line\nNP_OK=1\n1BAD=2\nNP-DASH=3\nNP_Q=\"open\n");
        assert_eq!(vars["NP_OK"].value, "1");
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 3, 4, 5], "{errors:?}");
        assert!(errors[3].reason.contains("unterminated double quote"));
    }
}
