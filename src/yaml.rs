//! A YAML document as a tree of nodes that remember their line and column, built from
//! `saphyr-parser` events (the only file that knows that crate). Anchors, aliases and `<<`
//! merge keys are resolved here; typing of scalars is left to the reader (the job config
//! validator, the Salt master config reader).

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub text: String,
    /// Unquoted: only plain scalars are read as null, booleans or numbers.
    pub plain: bool,
    /// An explicit `!!str`-style tag forces a string.
    pub tagged_str: bool,
}

/// A key defined twice in one mapping.
#[derive(Clone, Debug, PartialEq)]
pub struct DuplicateKey {
    pub key: String,
    pub pos: Pos,
    pub first: Pos,
}

#[derive(Debug, PartialEq)]
pub struct Document {
    /// `None` for an empty file.
    pub root: Option<Node>,
    pub duplicates: Vec<DuplicateKey>,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

impl Node {
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            Kind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.kind {
            Kind::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// A scalar key's text, borrowed.
    pub fn key_str(&self) -> Option<&str> {
        self.as_scalar().map(|s| s.text.as_str())
    }

    /// A key's text (keys are compared by their scalar text).
    pub fn key_text(&self) -> String {
        match &self.kind {
            Kind::Scalar(s) => s.text.clone(),
            Kind::Seq(_) => "[...]".into(),
            Kind::Map(_) => "{...}".into(),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar(s) if s.is_null())
    }

    /// What this node is, for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Map(_) => "a mapping",
            Kind::Seq(_) => "a list",
            Kind::Scalar(s) if s.is_null() => "nothing (null)",
            Kind::Scalar(s) if s.as_bool().is_some() => "a boolean",
            Kind::Scalar(s) if s.as_int().is_some() => "a number",
            Kind::Scalar(_) => "a string",
        }
    }
}

impl Scalar {
    pub fn is_null(&self) -> bool {
        self.plain
            && !self.tagged_str
            && matches!(self.text.as_str(), "" | "~" | "null" | "Null" | "NULL")
    }

    /// YAML 1.2 booleans.
    pub fn as_bool(&self) -> Option<bool> {
        if !self.plain || self.tagged_str {
            return None;
        }
        match self.text.as_str() {
            "true" | "True" | "TRUE" => Some(true),
            "false" | "False" | "FALSE" => Some(false),
            _ => None,
        }
    }

    /// YAML 1.1 booleans that PyYAML (the original's loader) accepted.
    pub fn as_legacy_bool(&self) -> Option<bool> {
        if !self.plain || self.tagged_str {
            return None;
        }
        match self.text.as_str() {
            "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "y" | "Y" => Some(true),
            "no" | "No" | "NO" | "off" | "Off" | "OFF" | "n" | "N" => Some(false),
            _ => None,
        }
    }

    /// A plain decimal integer.
    pub fn as_int(&self) -> Option<i64> {
        if !self.plain || self.tagged_str {
            return None;
        }
        let t = self.text.strip_prefix('+').unwrap_or(&self.text);
        if t.is_empty()
            || !t
                .trim_start_matches('-')
                .bytes()
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        t.parse().ok()
    }
}

/// Parses one YAML document. Several documents in one file are an error: a job file is one
/// mapping.
pub fn parse(text: &str) -> Result<Document, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    let mut documents = 0;
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| YamlError {
            pos: Pos {
                line: e.marker().line() as u32,
                col: e.marker().col() as u32 + 1,
            },
            message: e.info().to_string(),
        })?;
        if let Event::DocumentStart(_) = event {
            documents += 1;
            if documents > 1 {
                return Err(YamlError {
                    pos: pos(span),
                    message: "a job file holds one YAML document; found a second one (`---`)"
                        .into(),
                });
            }
        }
        builder.event(event, span)?;
    }
    Ok(Document {
        root: builder.root,
        duplicates: builder.duplicates,
    })
}

fn pos(span: Span) -> Pos {
    Pos {
        line: span.start.line() as u32,
        col: span.start.col() as u32 + 1,
    }
}

enum Frame {
    Seq(Pos, usize, Vec<Node>),
    Map(Pos, usize, Vec<(Node, Node)>, Option<Node>),
}

/// The most nodes aliases may copy in one document: far beyond any job directory's shared
/// defaults, and a bound on "billion laughs" (aliases of aliases: 500 bytes, 10^9 nodes).
const MAX_ALIAS_NODES: usize = 1_000_000;

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: std::collections::HashMap<usize, Node>,
    root: Option<Node>,
    duplicates: Vec<DuplicateKey>,
    /// Nodes copied by aliases so far.
    copied: usize,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), YamlError> {
        let at = pos(span);
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let tagged_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let node = Node {
                    pos: at,
                    kind: Kind::Scalar(Scalar {
                        text: text.into_owned(),
                        plain: style == ScalarStyle::Plain,
                        tagged_str,
                    }),
                };
                self.push(node, anchor)
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).ok_or_else(|| YamlError {
                    pos: at,
                    message: "alias to an unknown anchor".into(),
                })?;
                self.copied += count_nodes(node, MAX_ALIAS_NODES - self.copied + 1);
                if self.copied > MAX_ALIAS_NODES {
                    return Err(YamlError {
                        pos: at,
                        message: format!(
                            "aliases here expand to more than {MAX_ALIAS_NODES} nodes"
                        ),
                    });
                }
                let node = node.clone();
                // An alias is read where it is used, so its findings point there.
                self.push(relocate(node, at), 0)
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Frame::Seq(at, anchor, Vec::new()));
                Ok(())
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map(at, anchor, Vec::new(), None));
                Ok(())
            }
            Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Seq(p, anchor, items)) => self.push(
                    Node {
                        pos: p,
                        kind: Kind::Seq(items),
                    },
                    anchor,
                ),
                _ => unreachable!("parser emits balanced events"),
            },
            Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Map(p, anchor, entries, _)) => {
                    let entries = self.merge(entries)?;
                    self.push(
                        Node {
                            pos: p,
                            kind: Kind::Map(entries),
                        },
                        anchor,
                    )
                }
                _ => unreachable!("parser emits balanced events"),
            },
            _ => Ok(()),
        }
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), YamlError> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(_, _, items)) => items.push(node),
            Some(Frame::Map(_, _, entries, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
        Ok(())
    }

    /// Resolves `<<` merge keys (explicit keys win) and records duplicate keys.
    fn merge(&mut self, entries: Vec<(Node, Node)>) -> Result<Vec<(Node, Node)>, YamlError> {
        let mut out: Vec<(Node, Node)> = Vec::with_capacity(entries.len());
        let mut merged: Vec<(Node, Node)> = Vec::new();
        // Key text -> position of its first occurrence.
        let mut seen: std::collections::HashMap<String, Pos> = std::collections::HashMap::new();
        for (key, value) in entries {
            let is_merge = matches!(&key.kind, Kind::Scalar(s) if s.plain && s.text == "<<");
            if is_merge {
                let sources = match value.kind {
                    Kind::Map(m) => vec![m],
                    Kind::Seq(items) => items
                        .into_iter()
                        .map(|n| match n.kind {
                            Kind::Map(m) => Ok(m),
                            _ => Err(YamlError {
                                pos: n.pos,
                                message: "`<<` merges mappings only".into(),
                            }),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => {
                        return Err(YamlError {
                            pos: value.pos,
                            message: "`<<` merges mappings only".into(),
                        });
                    }
                };
                merged.extend(sources.into_iter().flatten());
                continue;
            }
            let text = key.key_text();
            if let Some(first) = seen.get(&text) {
                self.duplicates.push(DuplicateKey {
                    key: text,
                    pos: key.pos,
                    first: *first,
                });
                continue;
            }
            seen.insert(text, key.pos);
            out.push((key, value));
        }
        for (key, value) in merged {
            if let std::collections::hash_map::Entry::Vacant(slot) = seen.entry(key.key_text()) {
                slot.insert(key.pos);
                out.push((key, value));
            }
        }
        Ok(out)
    }
}

/// The nodes in `node`'s tree, counted up to `limit` (the cost of an alias, bounded).
fn count_nodes(node: &Node, limit: usize) -> usize {
    let mut count = 0;
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        count += 1;
        if count >= limit {
            break;
        }
        match &n.kind {
            Kind::Scalar(_) => {}
            Kind::Seq(items) => stack.extend(items),
            Kind::Map(entries) => stack.extend(entries.iter().flat_map(|(k, v)| [k, v])),
        }
    }
    count
}

fn relocate(mut node: Node, at: Pos) -> Node {
    node.pos = at;
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(text: &str) -> Node {
        parse(text).unwrap().root.unwrap()
    }

    #[test]
    fn positions_are_one_based() {
        let n = root("a:\n  b: 'x'\n");
        let (k, v) = &n.as_map().unwrap()[0];
        assert_eq!(k.pos, Pos { line: 1, col: 1 });
        let (k2, v2) = &v.as_map().unwrap()[0];
        assert_eq!(k2.pos, Pos { line: 2, col: 3 });
        assert_eq!(v2.pos, Pos { line: 2, col: 6 });
        assert!(!v2.as_scalar().unwrap().plain);
    }

    #[test]
    fn merge_keys_and_aliases() {
        let n = root(".d: &d {user: root, cwd: /tmp}\njob:\n  <<: *d\n  cwd: /srv\n");
        let job = &n.as_map().unwrap()[1].1;
        let keys: Vec<(String, String)> = job
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.key_text(), v.key_text()))
            .collect();
        assert_eq!(
            keys,
            [
                ("cwd".into(), "/srv".into()),
                ("user".into(), "root".into())
            ]
        );
    }

    #[test]
    fn duplicates_are_recorded_and_the_first_kept() {
        let d = parse("a: 1\nb: 2\na: 3\n").unwrap();
        assert_eq!(
            d.duplicates,
            [DuplicateKey {
                key: "a".into(),
                pos: Pos { line: 3, col: 1 },
                first: Pos { line: 1, col: 1 }
            }]
        );
        assert_eq!(d.root.unwrap().as_map().unwrap()[0].1.key_text(), "1");
    }

    #[test]
    fn scalars_are_typed_only_when_plain() {
        let s = |t: &str, plain| Scalar {
            text: t.into(),
            plain,
            tagged_str: false,
        };
        assert_eq!(s("true", true).as_bool(), Some(true));
        assert_eq!(s("true", false).as_bool(), None);
        assert_eq!(s("yes", true).as_legacy_bool(), Some(true));
        assert_eq!(s("-12", true).as_int(), Some(-12));
        assert_eq!(s("1.5", true).as_int(), None);
        assert!(s("~", true).is_null());
        assert!(!s("", false).is_null());
    }

    #[test]
    fn aliases_of_aliases_are_bounded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let e = parse(&text).unwrap_err();
        assert_eq!(e.pos.line, 6, "{e:?}");
        assert!(e.message.contains("more than"), "{e:?}");
    }

    #[test]
    fn syntax_errors_and_second_documents_have_positions() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1, "{e:?}");
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
        assert!(parse("").unwrap().root.is_none());
    }
}
