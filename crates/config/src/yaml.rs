//! Reading a YAML file into a small tree that keeps, for every node, where it starts and
//! the scalar's raw text.
//!
//! Why not serde: a serde `Deserialize` stops at the first error, and YAML 1.2 typing
//! throws away the text the user wrote (`listen.mode: 0660` would arrive as the integer
//! 660, `env: {DEBUG: yes}` as a boolean). The config needs every problem at once and
//! each scalar exactly as written, so this module builds its own tree from
//! `saphyr-parser` events, and the loader interprets each scalar against the directive
//! table.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;

/// A 1-based line and column inside one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
}

impl Pos {
    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

/// One YAML node with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Where the node starts.
    pub pos: Pos,
    /// What it is.
    pub kind: NodeKind,
}

/// The shape of a [`Node`].
#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// A scalar, with its text as written (after YAML unquoting, before any typing).
    Scalar {
        /// The text.
        text: String,
        /// Plain or quoted: only a plain `~`, `null` or empty scalar means "no value".
        style: ScalarStyle,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order (duplicate keys are kept for the loader to report).
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The word used for this node's type in messages ("a list", "a mapping", ...).
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar { .. } if self.is_null() => "empty",
            NodeKind::Scalar { .. } => "a scalar",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    /// True for a plain `~`, `null` (any case YAML allows) or empty scalar.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, style: ScalarStyle::Plain }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The scalar's text, if this is a scalar.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// A YAML syntax error, or a construct the config does not allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlError {
    /// Where.
    pub pos: Pos,
    /// What.
    pub message: String,
}

/// Parse one file's text. `Ok(None)` for a file without any document (empty or only
/// comments).
pub fn parse(text: &str) -> Result<Option<Node>, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder::default();
    let mut documents = 0usize;
    loop {
        let (event, span) = match parser.next_event() {
            None => break,
            Some(Ok(pair)) => pair,
            Some(Err(e)) => {
                let m = e.marker();
                return Err(YamlError {
                    pos: Pos {
                        line: m.line(),
                        column: m.col() + 1,
                    },
                    message: format!("YAML syntax error: {}", e.info()),
                });
            }
        };
        let pos = Pos::of(&span);
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError {
                        pos,
                        message: "a config file holds a single YAML document; remove the \
                                  second '---' or split the file"
                            .into(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let node = Node {
                    pos,
                    kind: NodeKind::Scalar {
                        text: text.into_owned(),
                        style,
                    },
                };
                builder.push(node, anchor);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _)
                if builder.stack.len() >= MAX_DEPTH =>
            {
                let _ = anchor;
                return Err(YamlError {
                    pos,
                    message: format!("nesting deeper than {MAX_DEPTH} levels"),
                });
            }
            Event::SequenceStart(anchor, _) => builder.open(pos, anchor, false),
            Event::MappingStart(anchor, _) => builder.open(pos, anchor, true),
            Event::SequenceEnd | Event::MappingEnd => builder.close(),
            Event::Alias(id) => match builder.anchors.get(&id) {
                Some((_, size)) if builder.nodes + size > MAX_NODES => {
                    return Err(YamlError {
                        pos,
                        message: format!("the aliases expand to more than {MAX_NODES} YAML nodes"),
                    });
                }
                Some((node, size)) => {
                    builder.nodes += size;
                    let mut node = node.clone();
                    // Report problems in an aliased value where the alias is used.
                    node.pos = pos;
                    builder.push(node, 0);
                }
                None => {
                    return Err(YamlError {
                        pos,
                        message: "YAML alias refers to an unknown anchor".into(),
                    });
                }
            },
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    Ok(builder.root)
}

/// Deepest nesting accepted; config files need a handful of levels, and the limit keeps
/// hostile input from recursing deeply when the tree is dropped.
const MAX_DEPTH: usize = 64;

/// Most nodes that aliases may expand to (a "billion laughs" file would otherwise
/// exhaust memory).
const MAX_NODES: usize = 100_000;

/// Turns the flat event stream into nested nodes.
#[derive(Default)]
struct Builder {
    /// Open collections: the node being filled, its anchor, and for a mapping the
    /// key waiting for its value.
    stack: Vec<(Node, usize, Option<Node>)>,
    /// Completed anchored nodes, for aliases, with their node counts.
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes in the tree so far, aliases counted in full.
    nodes: usize,
    /// The finished document.
    root: Option<Node>,
}

impl Builder {
    fn open(&mut self, pos: Pos, anchor: usize, mapping: bool) {
        let kind = if mapping {
            NodeKind::Map(Vec::new())
        } else {
            NodeKind::Seq(Vec::new())
        };
        self.stack.push((Node { pos, kind }, anchor, None));
    }

    fn close(&mut self) {
        if let Some((node, anchor, _)) = self.stack.pop() {
            self.push(node, anchor);
        }
    }

    fn push(&mut self, node: Node, anchor: usize) {
        self.nodes += 1;
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), count(&node)));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some((parent, _, pending_key)) => match &mut parent.kind {
                NodeKind::Seq(items) => items.push(node),
                NodeKind::Map(entries) => match pending_key.take() {
                    None => *pending_key = Some(node),
                    Some(key) => entries.push((key, node)),
                },
                NodeKind::Scalar { .. } => unreachable!("scalars are never opened"),
            },
        }
    }
}

/// Nodes in a tree, iteratively (depth is bounded, but this stays cheap anyway).
fn count(node: &Node) -> usize {
    let mut stack = vec![node];
    let mut n = 0;
    while let Some(node) = stack.pop() {
        n += 1;
        match &node.kind {
            NodeKind::Scalar { .. } => {}
            NodeKind::Seq(items) => stack.extend(items),
            NodeKind::Map(entries) => {
                for (k, v) in entries {
                    stack.push(k);
                    stack.push(v);
                }
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(node: &Node) -> (&str, usize, usize) {
        (node.as_scalar().unwrap(), node.pos.line, node.pos.column)
    }

    #[test]
    fn keeps_raw_text_and_positions() {
        let root = parse("a: 0660\nb:\n  - x\n  - 'y'\nc: {d: yes}\ne:\n")
            .unwrap()
            .unwrap();
        let NodeKind::Map(entries) = &root.kind else {
            panic!()
        };
        assert_eq!(scalar(&entries[0].0), ("a", 1, 1));
        assert_eq!(scalar(&entries[0].1), ("0660", 1, 4));
        let NodeKind::Seq(items) = &entries[1].1.kind else {
            panic!()
        };
        assert_eq!(scalar(&items[0]), ("x", 3, 5));
        assert_eq!(scalar(&items[1]), ("y", 4, 5));
        assert!(!items[1].is_null());
        let NodeKind::Map(inner) = &entries[2].1.kind else {
            panic!()
        };
        assert_eq!(scalar(&inner[0].1), ("yes", 5, 8));
        assert!(entries[3].1.is_null());
    }

    #[test]
    fn quoted_null_is_a_string() {
        let root = parse("a: 'null'\nb: ~\n").unwrap().unwrap();
        let NodeKind::Map(entries) = &root.kind else {
            panic!()
        };
        assert!(!entries[0].1.is_null());
        assert!(entries[1].1.is_null());
    }

    #[test]
    fn aliases_are_copied_at_the_alias_position() {
        let root = parse("a: &x [1, 2]\nb: *x\n").unwrap().unwrap();
        let NodeKind::Map(entries) = &root.kind else {
            panic!()
        };
        assert_eq!(entries[1].1.pos, Pos { line: 2, column: 4 });
        assert_eq!(entries[1].1.type_name(), "a list");
    }

    #[test]
    fn empty_file_has_no_document() {
        assert_eq!(parse("# nothing\n").unwrap(), None);
        assert_eq!(parse("").unwrap(), None);
    }

    #[test]
    fn syntax_error_has_a_position() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.message.starts_with("YAML syntax error: "), "{e:?}");
        assert!(e.pos.line >= 1);
        let e = parse("a: 1\n b: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2, "{e:?}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("a: {}{}\n", "[".repeat(70), "]".repeat(70));
        let e = parse(&deep).unwrap_err();
        assert_eq!(e.message, "nesting deeper than 64 levels");
        assert_eq!(
            e.pos,
            Pos {
                line: 1,
                column: 67
            }
        );
        // Far deeper input stops in the parser itself.
        let deeper = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(&deeper).is_err());
        assert!(parse(&format!("a: {}\n", "{a: ".repeat(50_000))).is_err());
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.message,
            "the aliases expand to more than 100000 YAML nodes"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn yaml_like_text_never_panics(text in "[a-z: \\-\\[\\]{},'\"&*!|>#\n\t~]{0,120}") {
            let _ = parse(&text);
        }
    }

    #[test]
    fn second_document_is_refused() {
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
    }
}
