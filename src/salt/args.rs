//! Command-line arguments to Salt function arguments, as Salt's CLI reads them: `key=value`
//! words are keyword arguments whose values are read as YAML (`timeout=5` is a number,
//! `env='{A: b}'` a mapping); other words are positional strings, sent unchanged.

use std::collections::BTreeMap;

use rmpv::Value;

use crate::yaml::{self, Kind, Node};

/// Splits words into positional arguments and keyword arguments.
pub fn split(words: &[String]) -> (Vec<Value>, BTreeMap<String, Value>) {
    let mut args = Vec::new();
    let mut kwargs = BTreeMap::new();
    for word in words {
        match keyword(word) {
            Some((key, value)) => {
                kwargs.insert(key.to_string(), yaml_value(value));
            }
            None => args.push(Value::from(word.as_str())),
        }
    }
    (args, kwargs)
}

/// `key=value` with a Python-identifier-like key (Salt's `parse_input` rule).
fn keyword(word: &str) -> Option<(&str, &str)> {
    let (key, value) = word.split_once('=')?;
    let mut chars = key.chars();
    let first = chars.next()?;
    let ok = (first.is_alphabetic() || first == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !value.starts_with('=');
    ok.then_some((key, value))
}

/// A YAML scalar or collection as a msgpack value; text that is not valid YAML stays a string.
pub fn yaml_value(text: &str) -> Value {
    match yaml::parse(text) {
        Ok(doc) => doc.root.map_or(Value::Nil, |n| node_value(&n)),
        Err(_) => Value::from(text),
    }
}

fn node_value(node: &Node) -> Value {
    match &node.kind {
        Kind::Scalar(s) if s.is_null() => Value::Nil,
        Kind::Scalar(s) => {
            if let Some(b) = s.as_bool() {
                Value::from(b)
            } else if let Some(i) = s.as_int() {
                Value::from(i)
            } else if let Some(f) = s
                .plain
                .then(|| s.text.parse::<f64>().ok())
                .flatten()
                .filter(|f| f.is_finite())
            {
                Value::from(f)
            } else {
                Value::from(s.text.as_str())
            }
        }
        Kind::Seq(items) => Value::Array(items.iter().map(node_value).collect()),
        Kind::Map(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| (Value::from(k.key_text()), node_value(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keywords_are_typed_positionals_untouched() {
        let (args, kwargs) = split(&words(&[
            "echo a=b",
            "x == y",
            "timeout=5",
            "env={A: b}",
            "cwd=/tmp",
            "quiet=true",
        ]));
        assert_eq!(args, [Value::from("echo a=b"), Value::from("x == y")]);
        assert_eq!(kwargs["timeout"], Value::from(5));
        assert_eq!(kwargs["cwd"], Value::from("/tmp"));
        assert_eq!(kwargs["quiet"], Value::from(true));
        assert_eq!(
            kwargs["env"],
            Value::Map(vec![(Value::from("A"), Value::from("b"))])
        );
    }
}
