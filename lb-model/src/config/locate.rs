//! Where each node of a YAML document starts, by path (`services[0].backends[1].weight`), so that
//! problems found after parsing can still say `file:line:col`.

use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
};

/// 1-based line and column.
pub type LineCol = (usize, usize);

#[derive(Debug, Default)]
pub struct Locations {
    by_path: HashMap<String, LineCol>,
}

impl Locations {
    /// Indexes `text`. A document that does not parse yields an empty index (serde reports the
    /// syntax error with its own location).
    pub fn index(text: &str) -> Self {
        let mut builder = Builder::default();
        let _ = Parser::new_from_str(text).load(&mut builder, false);
        Self {
            by_path: builder.by_path,
        }
    }

    /// The location of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<LineCol> {
        let mut path = path;
        loop {
            if let Some(&at) = self.by_path.get(path) {
                return Some(at);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

/// yaml-rust2 counts columns from 0; editors and serde_norway from 1.
fn line_col(mark: Marker) -> LineCol {
    (mark.line(), mark.col() + 1)
}

enum Frame {
    /// `key` is the key whose value comes next; `None` while a key is expected.
    Mapping {
        key: Option<String>,
    },
    Sequence {
        index: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    /// Path segments of the node being read, formatted as serde_path_to_error does.
    path: Vec<String>,
    by_path: HashMap<String, LineCol>,
    /// A mapping item whose location is taken from its first key (the parser's mark for a block
    /// mapping's start points past that key).
    pending: Option<String>,
}

impl Builder {
    fn joined(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            if !out.is_empty() && !seg.starts_with('[') {
                out.push('.');
            }
            out.push_str(seg);
        }
        out
    }

    /// A value (scalar or collection) starts at `mark`; returns false if it was a mapping key.
    fn begin_node(&mut self, scalar: Option<&str>, opens_mapping: bool, mark: Marker) -> bool {
        match self.stack.last_mut() {
            Some(Frame::Mapping { key }) if key.is_none() => {
                let name = scalar.unwrap_or("?").to_string();
                *key = Some(name.clone());
                self.path.push(name);
                let at = line_col(mark);
                let joined = self.joined();
                self.by_path.insert(joined, at);
                return false;
            }
            Some(Frame::Sequence { index }) => {
                self.path.push(format!("[{index}]"));
                let joined = self.joined();
                self.by_path.insert(joined.clone(), line_col(mark));
                if opens_mapping {
                    self.pending = Some(joined);
                }
            }
            _ => {}
        }
        true
    }

    /// The value begun last is complete.
    fn end_node(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Mapping { key }) => {
                *key = None;
                self.path.pop();
            }
            Some(Frame::Sequence { index }) => {
                *index += 1;
                self.path.pop();
            }
            None => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(item) = self.pending.take() {
                    self.by_path.insert(item, line_col(mark));
                }
                if self.begin_node(Some(&value), false, mark) {
                    self.end_node();
                }
            }
            Event::Alias(_) if self.begin_node(None, false, mark) => self.end_node(),
            Event::MappingStart(..) => {
                self.begin_node(None, true, mark);
                self.stack.push(Frame::Mapping { key: None });
            }
            Event::SequenceStart(..) => {
                self.begin_node(None, false, mark);
                self.stack.push(Frame::Sequence { index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.end_node();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_items_and_ancestors() {
        let text = "mode: one-arm\nports: [\"1\", \"2\"]\nservices:\n  - name: owa\n    backends:\n      - { name: a, weight: 5 }\n      - name: b\n        weight: 2000\n";
        let at = Locations::index(text);
        assert_eq!(at.find("mode"), Some((1, 1)));
        assert_eq!(at.find("services[0].name"), Some((4, 5)));
        assert_eq!(at.find("services[0].backends[0].weight"), Some((6, 20)));
        assert_eq!(at.find("services[0].backends[1].weight"), Some((8, 9)));
        assert_eq!(at.find("services[0].backends[1].nope"), Some((7, 9)));
        assert_eq!(at.find("ports[1]"), Some((2, 14)));
        assert_eq!(at.find("nothing"), None);
    }
}
