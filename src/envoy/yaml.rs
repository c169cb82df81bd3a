//! A YAML document as a tree whose every node knows its line, so that a
//! configuration error can name the line it is on. Scalars keep their style:
//! a plain `true` or `5` is a boolean or a number, a quoted one a string, as
//! in YAML 1.1 (gopkg.in/yaml.v2, which envoyproxy/ratelimit reads its files
//! with).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One node and the line (1-based) it starts on.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: NodeValue,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeValue {
    /// A scalar; `plain` when unquoted (so it may be a number, a boolean or null).
    Scalar {
        text: String,
        plain: bool,
    },
    Sequence(Vec<Node>),
    /// Entries in file order; keys may repeat (the reader decides).
    Mapping(Vec<(Node, Node)>),
}

/// What a plain or quoted scalar stands for.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float,
    Str(&'a str),
}

impl Node {
    /// The YAML 1.1 reading of a scalar node (`None` for a collection).
    pub fn scalar(&self) -> Option<Scalar<'_>> {
        let NodeValue::Scalar { text, plain } = &self.value else {
            return None;
        };
        if !plain {
            return Some(Scalar::Str(text));
        }
        Some(match text.as_str() {
            "" | "~" | "null" | "Null" | "NULL" => Scalar::Null,
            "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "y" | "Y" => {
                Scalar::Bool(true)
            }
            "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "n"
            | "N" => Scalar::Bool(false),
            other => match parse_int(other) {
                Some(int) => Scalar::Int(int),
                None if is_float(other) => Scalar::Float,
                None => Scalar::Str(other),
            },
        })
    }

    /// What kind of node this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match (&self.value, self.scalar()) {
            (NodeValue::Sequence(_), _) => "a list",
            (NodeValue::Mapping(_), _) => "a map",
            (_, Some(Scalar::Null)) => "empty",
            (_, Some(Scalar::Bool(_))) => "a boolean",
            (_, Some(Scalar::Int(_))) => "an integer",
            (_, Some(Scalar::Float)) => "a number",
            _ => "a string",
        }
    }
}

fn parse_int(text: &str) -> Option<i64> {
    let cleaned = text.replace('_', "");
    let (negative, digits) = match cleaned.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, cleaned.strip_prefix('+').unwrap_or(&cleaned)),
    };
    let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if digits.starts_with('0') && digits.len() > 1 {
        i64::from_str_radix(&digits[1..], 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(if negative { -magnitude } else { magnitude })
}

fn is_float(text: &str) -> bool {
    matches!(text, ".inf" | "-.inf" | "+.inf" | ".nan" | ".NaN")
        || (text.contains(['.', 'e', 'E'])
            && text.bytes().any(|b| b.is_ascii_digit())
            && text.parse::<f64>().is_ok())
}

/// Why a document could not be read: the line and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Reads the first document of `text` (an empty document is `None`).
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut builder = TreeBuilder::default();
    Parser::new_from_str(text)
        .load(&mut builder, false)
        .map_err(|e| SyntaxError {
            line: e.marker().line(),
            message: e.info().to_owned(),
        })?;
    if let Some(error) = builder.error {
        return Err(error);
    }
    Ok(builder.root)
}

/// Builds the tree from the parser's events.
#[derive(Default)]
struct TreeBuilder {
    /// Open collections, innermost last, each with its anchor id.
    open: Vec<(Node, usize)>,
    /// Pending mapping keys, one slot per open mapping.
    keys: Vec<Option<Node>>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    error: Option<SyntaxError>,
}

impl TreeBuilder {
    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.open.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some((parent, _)) => match &mut parent.value {
                NodeValue::Sequence(items) => items.push(node),
                NodeValue::Mapping(entries) => {
                    let slot = self.keys.last_mut().expect("a key slot per open mapping");
                    match slot.take() {
                        None => *slot = Some(node),
                        Some(key) => entries.push((key, node)),
                    }
                }
                NodeValue::Scalar { .. } => unreachable!("scalars are never open"),
            },
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let line = mark.line();
        match event {
            Event::Scalar(text, style, anchor, _) => {
                let plain = style == TScalarStyle::Plain;
                self.finish(
                    Node {
                        line,
                        value: NodeValue::Scalar { text, plain },
                    },
                    anchor,
                );
            }
            Event::SequenceStart(anchor, _) => self.open.push((
                Node {
                    line,
                    value: NodeValue::Sequence(Vec::new()),
                },
                anchor,
            )),
            Event::MappingStart(anchor, _) => {
                self.open.push((
                    Node {
                        line,
                        value: NodeValue::Mapping(Vec::new()),
                    },
                    anchor,
                ));
                self.keys.push(None);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if matches!(event, Event::MappingEnd) {
                    self.keys.pop();
                }
                if let Some((node, anchor)) = self.open.pop() {
                    self.finish(node, anchor);
                }
            }
            Event::Alias(anchor) => match self.anchors.get(&anchor).cloned() {
                Some(node) => self.finish(node, 0),
                None => {
                    self.error.get_or_insert(SyntaxError {
                        line,
                        message: "alias to an unknown anchor".to_owned(),
                    });
                }
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_know_their_lines_and_scalars_their_types() {
        let root = parse("---\ndomain: rl\nlimits:\n  - n: 5\n    on: yes\n    q: \"5\"\n")
            .unwrap()
            .unwrap();
        let NodeValue::Mapping(entries) = &root.value else {
            panic!()
        };
        assert_eq!(entries[0].0.line, 2);
        assert_eq!(entries[0].1.scalar(), Some(Scalar::Str("rl")));
        let NodeValue::Sequence(items) = &entries[1].1.value else {
            panic!()
        };
        assert_eq!(items[0].line, 4);
        let NodeValue::Mapping(item) = &items[0].value else {
            panic!()
        };
        assert_eq!(item[0].1.scalar(), Some(Scalar::Int(5)));
        assert_eq!(
            item[1].0.scalar(),
            Some(Scalar::Bool(true)),
            "YAML 1.1 keys too"
        );
        assert_eq!(
            item[2].1.scalar(),
            Some(Scalar::Str("5")),
            "quoted stays a string"
        );
        assert_eq!(item[2].1.line, 6);
    }

    #[test]
    fn syntax_errors_name_their_line_and_aliases_resolve() {
        let error = parse("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(error.line >= 2, "{error:?}");
        let root = parse("a: &x {k: v}\nb: *x\n").unwrap().unwrap();
        let NodeValue::Mapping(entries) = &root.value else {
            panic!()
        };
        assert_eq!(entries[0].1.value, entries[1].1.value);
        assert_eq!(parse("# nothing\n").unwrap(), None);
        assert_eq!(parse("0.25: x").unwrap().unwrap().kind(), "a map");
    }
}
