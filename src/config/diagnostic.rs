//! Findings about the config directory: `file:line:col: error|warning: message`.

use std::fmt;

use crate::yaml::Pos;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// What kind of finding this is; tests use it to prove every kind has a golden case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    Unreadable,
    Yaml,
    NotAMapping,
    DuplicateKey,
    DuplicateJob,
    MissingKey,
    WrongType,
    BadValue,
    BadCron,
    BadTimeZone,
    UnknownKey,
    LegacyKey,
    LegacyBool,
    NeverFires,
    Unsupported,
    Overridden,
    EmptyFile,
    /// A file with errors: its last good version is still in use.
    KeptLastGood,
    /// A job runs a wrapper that sends no run token (the original's).
    TokenlessWrapper,
    /// A key that has no effect given the job's other keys (`misfire_max` without `misfire: all`).
    NoEffect,
}

impl Code {
    pub const ALL: [Code; 20] = [
        Code::Unreadable,
        Code::Yaml,
        Code::NotAMapping,
        Code::DuplicateKey,
        Code::DuplicateJob,
        Code::MissingKey,
        Code::WrongType,
        Code::BadValue,
        Code::BadCron,
        Code::BadTimeZone,
        Code::UnknownKey,
        Code::LegacyKey,
        Code::LegacyBool,
        Code::NeverFires,
        Code::Unsupported,
        Code::Overridden,
        Code::EmptyFile,
        Code::KeptLastGood,
        Code::TokenlessWrapper,
        Code::NoEffect,
    ];
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// The file's path as the directory listing named it (`DIR/name.yaml`).
    pub file: String,
    pub pos: Pos,
    pub severity: Severity,
    pub code: Code,
    pub message: String,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.pos.line, self.pos.col, self.severity, self.message
        )
    }
}

/// Collects findings for one file.
#[derive(Debug)]
pub(crate) struct Sink {
    file: String,
    pub(crate) found: Vec<Diagnostic>,
}

impl Sink {
    pub(crate) fn new(file: &str) -> Sink {
        Sink {
            file: file.to_string(),
            found: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, pos: Pos, code: Code, message: impl Into<String>) {
        self.push(pos, Severity::Error, code, message.into());
    }

    pub(crate) fn warning(&mut self, pos: Pos, code: Code, message: impl Into<String>) {
        self.push(pos, Severity::Warning, code, message.into());
    }

    fn push(&mut self, pos: Pos, severity: Severity, code: Code, message: String) {
        self.found.push(Diagnostic {
            file: self.file.clone(),
            pos,
            severity,
            code,
            message,
        });
    }
}

/// "did you mean `x`?" for a misspelt key, when one known key is close enough.
pub(crate) fn suggest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_close_only() {
        let known = ["command", "targets", "target_type", "timeout"];
        assert_eq!(suggest("comand", &known), Some("command"));
        assert_eq!(suggest("target", &known), Some("targets"));
        assert_eq!(suggest("tagret_type", &known), Some("target_type"));
        assert_eq!(suggest("colour", &known), None);
    }
}
