//! Turns pipeline text into a small position-carrying YAML tree.
//!
//! This module owns YAML syntax concerns only: driving the event parser,
//! resolving aliases, rejecting duplicate keys and runaway nesting, and
//! recording a 1-based line/column for every node and key. It must not know
//! what any key means; the schema layer interprets the tree.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use crate::pipeline::PipelineError;

/// Deeper nesting than this has no legitimate use in a pipeline file and
/// would risk the stack in recursive consumers (including `Drop`).
pub(crate) const MAX_DEPTH: usize = 64;

/// Caps alias expansion so "billion laughs" documents cannot blow up memory.
pub(crate) const MAX_NODES: usize = 200_000;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub kind: NodeKind,
    pub line: u32,
    pub column: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NodeKind {
    /// `plain` is false for quoted and block scalars, which are always
    /// strings; plain scalars may be null, bools or numbers.
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub key_line: u32,
    pub key_column: u32,
    pub value: Node,
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, plain: true }
            if matches!(value.as_str(), "~" | "null" | "Null" | "NULL" | ""))
    }

    /// The YAML 1.2 core-schema reading of a plain scalar as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match &self.kind {
            NodeKind::Scalar { value, plain: true } => match value.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match &self.kind {
            NodeKind::Scalar { value, plain: true } => {
                let v: f64 = value.parse().ok()?;
                v.is_finite().then_some(v)
            }
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match &self.kind {
            NodeKind::Scalar { value, plain: true } => value.parse().ok(),
            _ => None,
        }
    }

    /// Any non-null scalar read as text; numbers and bools keep their source
    /// spelling, which is what users expect for env values and names.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } if !self.is_null() => Some(value),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar { .. } if self.is_null() => "null",
            NodeKind::Scalar { .. } if self.as_bool().is_some() => "boolean",
            NodeKind::Scalar { .. } if self.as_f64().is_some() => "number",
            NodeKind::Scalar { .. } => "string",
            NodeKind::Seq(_) => "list",
            NodeKind::Map(_) => "mapping",
        }
    }

    fn weight(&self) -> usize {
        // Iterative to stay safe regardless of shape.
        let mut count = 0;
        let mut stack = vec![self];
        while let Some(n) = stack.pop() {
            count += 1;
            match &n.kind {
                NodeKind::Scalar { .. } => {}
                NodeKind::Seq(items) => stack.extend(items.iter()),
                NodeKind::Map(entries) => stack.extend(entries.iter().map(|e| &e.value)),
            }
        }
        count
    }
}

fn position(span: &Span) -> (u32, u32) {
    let line = u32::try_from(span.start.line()).unwrap_or(u32::MAX);
    // The parser's columns are 0-based; ours are 1-based like editors.
    let column = u32::try_from(span.start.col().saturating_add(1)).unwrap_or(u32::MAX);
    (line.max(1), column)
}

/// What the next node in a mapping belongs to.
enum PendingKey {
    /// The next node is a key.
    None,
    Key(String, u32, u32),
    /// The key was unusable (already reported); drop the value.
    Invalid,
}

enum Frame {
    Seq {
        items: Vec<Node>,
        line: u32,
        column: u32,
        anchor: usize,
    },
    Map {
        entries: Vec<Entry>,
        /// Key line per key, so duplicate detection stays linear even for
        /// very wide mappings.
        seen: HashMap<String, u32>,
        pending_key: PendingKey,
        line: u32,
        column: u32,
        anchor: usize,
    },
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    errors: Vec<PipelineError>,
    nodes: usize,
}

impl Builder {
    fn finish_node(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                seen,
                pending_key,
                ..
            }) => match std::mem::replace(pending_key, PendingKey::None) {
                PendingKey::Invalid => {}
                PendingKey::None => match node.kind {
                    NodeKind::Scalar { value, .. } => {
                        *pending_key = PendingKey::Key(value, node.line, node.column);
                    }
                    _ => {
                        self.errors.push(PipelineError::new(
                            node.line,
                            node.column,
                            "mapping keys must be plain strings",
                            "use a simple `key: value` form",
                        ));
                        *pending_key = PendingKey::Invalid;
                    }
                },
                PendingKey::Key(key, key_line, key_column) => {
                    if let Some(first_line) = seen.get(&key) {
                        self.errors.push(PipelineError::new(
                            key_line,
                            key_column,
                            format!("duplicate key `{key}` (first defined at line {first_line})"),
                            "each key may appear only once in a mapping; merge or rename one of them",
                        ));
                        return;
                    }
                    seen.insert(key.clone(), key_line);
                    entries.push(Entry {
                        key,
                        key_line,
                        key_column,
                        value: node,
                    });
                }
            },
        }
    }
}

/// Parses one YAML document into a [`Node`] tree.
///
/// Syntax errors stop parsing (the parser cannot resynchronise) and yield no
/// tree, but structural problems such as duplicate keys are returned next to
/// the tree so the schema layer can keep collecting errors.
pub(crate) fn load(text: &str) -> (Option<Node>, Vec<PipelineError>) {
    let mut parser = Parser::new_from_str(text);
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        errors: Vec::new(),
        nodes: 0,
    };
    let mut documents = 0usize;
    while let Some(next) = parser.next_event() {
        let (event, span) = match next {
            Ok(ev) => ev,
            Err(e) => {
                let m = e.marker();
                let line = u32::try_from(m.line()).unwrap_or(u32::MAX).max(1);
                let column = u32::try_from(m.col().saturating_add(1)).unwrap_or(u32::MAX);
                b.errors.push(PipelineError::new(
                    line,
                    column,
                    format!("invalid YAML: {}", e.info()),
                    "check indentation, quoting and brackets around this position",
                ));
                return (None, b.errors);
            }
        };
        let (line, column) = position(&span);
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    b.errors.push(PipelineError::new(
                        line,
                        column,
                        "only one YAML document is allowed",
                        "remove the `---` separator and everything after it",
                    ));
                    return (None, b.errors);
                }
            }
            Event::Scalar(value, style, anchor, _) => {
                b.nodes += 1;
                let plain = matches!(style, ScalarStyle::Plain);
                b.finish_node(
                    Node {
                        kind: NodeKind::Scalar {
                            value: value.into_owned(),
                            plain,
                        },
                        line,
                        column,
                    },
                    anchor,
                );
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                b.nodes += 1;
                if b.stack.len() >= MAX_DEPTH {
                    b.errors.push(PipelineError::new(
                        line,
                        column,
                        format!("nesting deeper than {MAX_DEPTH} levels"),
                        "pipeline files never need this much nesting",
                    ));
                    return (None, b.errors);
                }
                let frame = if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq {
                        items: Vec::new(),
                        line,
                        column,
                        anchor,
                    }
                } else {
                    Frame::Map {
                        entries: Vec::new(),
                        seen: HashMap::new(),
                        pending_key: PendingKey::None,
                        line,
                        column,
                        anchor,
                    }
                };
                b.stack.push(frame);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = b.stack.pop() else {
                    continue;
                };
                let (node, anchor) = match frame {
                    Frame::Seq {
                        items,
                        line,
                        column,
                        anchor,
                    } => (
                        Node {
                            kind: NodeKind::Seq(items),
                            line,
                            column,
                        },
                        anchor,
                    ),
                    Frame::Map {
                        entries,
                        line,
                        column,
                        anchor,
                        ..
                    } => (
                        Node {
                            kind: NodeKind::Map(entries),
                            line,
                            column,
                        },
                        anchor,
                    ),
                };
                b.finish_node(node, anchor);
            }
            Event::Alias(id) => {
                let Some(target) = b.anchors.get(&id).cloned() else {
                    b.errors.push(PipelineError::new(
                        line,
                        column,
                        "alias refers to an unknown anchor",
                        "define the `&anchor` before using `*alias`",
                    ));
                    return (None, b.errors);
                };
                b.nodes = b.nodes.saturating_add(target.weight());
                if b.nodes > MAX_NODES {
                    b.errors.push(PipelineError::new(
                        line,
                        column,
                        format!("aliases expand to more than {MAX_NODES} nodes"),
                        "reduce the use of anchors and aliases",
                    ));
                    return (None, b.errors);
                }
                // Re-anchor the copy at the alias site so errors inside it point
                // somewhere the author can see.
                let mut copy = target;
                copy.line = line;
                copy.column = column;
                b.finish_node(copy, 0);
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    let root = b.root.take().unwrap_or(Node {
        kind: NodeKind::Scalar {
            value: String::new(),
            plain: true,
        },
        line: 1,
        column: 1,
    });
    (Some(root), b.errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &Node) -> &[Entry] {
        match &node.kind {
            NodeKind::Map(e) => e,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn positions_are_one_based() {
        let (root, errs) = load("a: 1\nb:\n  c: 'x'\n");
        assert!(errs.is_empty());
        let root = root.unwrap();
        let entries = map(&root);
        assert_eq!((entries[0].key_line, entries[0].key_column), (1, 1));
        assert_eq!((entries[0].value.line, entries[0].value.column), (1, 4));
        let inner = map(&entries[1].value);
        assert_eq!((inner[0].key_line, inner[0].key_column), (3, 3));
        assert_eq!(
            inner[0].value.kind,
            NodeKind::Scalar {
                value: "x".into(),
                plain: false
            }
        );
    }

    #[test]
    fn complex_and_duplicate_keys_are_reported_and_skipped() {
        let (root, errs) = load("? [a]\n: 1\nb: 2\nb: 3\n");
        let keys: Vec<&str> = map(root.as_ref().unwrap())
            .iter()
            .map(|e| e.key.as_str())
            .collect();
        assert_eq!(keys, ["b"]);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].message.contains("plain strings"));
        assert_eq!((errs[1].line, errs[1].column), (4, 1));
    }

    #[test]
    fn aliases_resolve() {
        let (root, errs) = load("a: &x {k: v}\nb: *x\n");
        assert!(errs.is_empty());
        let root = root.unwrap();
        let entries = map(&root);
        assert_eq!(map(&entries[1].value)[0].key, "k");
        assert_eq!(entries[1].value.line, 2);
    }

    #[test]
    fn multiple_documents_are_refused() {
        let (root, errs) = load("a: 1\n---\nb: 2\n");
        assert!(root.is_none());
        assert_eq!(errs[0].line, 2);
    }
}
