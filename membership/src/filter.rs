//! Tag filters ([`Filter`](crate::Filter)).

use std::{collections::BTreeMap, fmt, str::FromStr};

/// A member's tags: names, each with a value (empty for a bare tag).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Tags(BTreeMap<String, String>);

impl Tags {
    /// No tags.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets tag `name` to `value` (empty for a bare tag).
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.insert(name.into(), value.into());
        self
    }

    /// The value of tag `name`, if the member has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Every tag, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Tags {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// A parsed tag filter.
///
/// Tag filters: which members a call may go to, by their tags.
///
/// A member's tags are names with optional values (`gpu`, `zone=eu`). A filter is an
/// expression over them:
///
/// ```text
/// filter := or
/// or     := and ("||" and)*
/// and    := not ("&&" not)*
/// not    := "!" not | "(" filter ")" | test
/// test   := name | name "=" value | name "!=" value
/// ```
///
/// `name` holds when the member has the tag (with any value); `name=value` when it has it
/// with that value; `name!=value` when it does not (absent, or another value). Names and
/// values are letters, digits and `_ . : / -`. The empty filter matches every member.
///
/// ```
/// use flumen_membership::{Filter, Tags};
///
/// let filter: Filter = "zone=eu && (gpu || tier=gold) && !draining".parse().unwrap();
/// let worker = Tags::from_iter([("zone", "eu"), ("gpu", "")]);
/// assert!(filter.matches(&worker));
/// assert!(!filter.matches(&Tags::from_iter([("zone", "us"), ("gpu", "")])));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter(Node);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Any,
    Has(String),
    Is(String, String),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
}

impl Filter {
    /// The filter that matches every member.
    pub fn any() -> Self {
        Self(Node::Any)
    }

    /// Whether a member with `tags` passes.
    pub fn matches(&self, tags: &Tags) -> bool {
        self.0.matches(tags)
    }
}

impl Node {
    fn matches(&self, tags: &Tags) -> bool {
        match self {
            Self::Any => true,
            Self::Has(name) => tags.get(name).is_some(),
            Self::Is(name, value) => tags.get(name) == Some(value.as_str()),
            Self::Not(node) => !node.matches(tags),
            Self::And(a, b) => a.matches(tags) && b.matches(tags),
            Self::Or(a, b) => a.matches(tags) || b.matches(tags),
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn write(node: &Node, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match node {
                Node::Any => Ok(()),
                Node::Has(name) => f.write_str(name),
                Node::Is(name, value) => write!(f, "{name}={value}"),
                Node::Not(node) => {
                    f.write_str("!(")?;
                    write(node, f)?;
                    f.write_str(")")
                }
                Node::And(a, b) | Node::Or(a, b) => {
                    f.write_str("(")?;
                    write(a, f)?;
                    f.write_str(if matches!(node, Node::And(..)) {
                        " && "
                    } else {
                        " || "
                    })?;
                    write(b, f)?;
                    f.write_str(")")
                }
            }
        }
        write(&self.0, f)
    }
}

/// A filter that does not parse: what was expected, at which byte.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad tag filter at byte {at}: expected {expected}")]
pub struct FilterError {
    at: usize,
    expected: &'static str,
}

/// The longest filter accepted, in bytes (a filter may come from configuration or a peer).
pub const MAX_FILTER_LEN: usize = 4096;
/// The deepest nesting of `!` and parentheses accepted.
pub const MAX_FILTER_DEPTH: usize = 64;

impl FromStr for Filter {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Self, FilterError> {
        if text.len() > MAX_FILTER_LEN {
            return Err(FilterError {
                at: MAX_FILTER_LEN,
                expected: "a shorter filter",
            });
        }
        let mut parser = Parser {
            text: text.as_bytes(),
            at: 0,
            depth: 0,
        };
        parser.skip_space();
        if parser.at == parser.text.len() {
            return Ok(Self::any());
        }
        let node = parser.or()?;
        parser.skip_space();
        if parser.at != parser.text.len() {
            return Err(parser.error("`&&`, `||` or the end"));
        }
        Ok(Self(node))
    }
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, expected: &'static str) -> FilterError {
        FilterError {
            at: self.at,
            expected,
        }
    }

    fn skip_space(&mut self) {
        while self.text.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    /// Consumes `token` (after spaces) if it is next.
    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.text[self.at..].starts_with(token.as_bytes()) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Node, FilterError> {
        let mut node = self.and()?;
        while self.eat("||") {
            node = Node::Or(Box::new(node), Box::new(self.and()?));
        }
        Ok(node)
    }

    fn and(&mut self) -> Result<Node, FilterError> {
        let mut node = self.not()?;
        while self.eat("&&") {
            node = Node::And(Box::new(node), Box::new(self.not()?));
        }
        Ok(node)
    }

    fn not(&mut self) -> Result<Node, FilterError> {
        self.depth += 1;
        if self.depth > MAX_FILTER_DEPTH {
            return Err(self.error("less nesting"));
        }
        let node = if self.eat("!") && !self.text[self.at..].starts_with(b"=") {
            Node::Not(Box::new(self.not()?))
        } else if self.eat("(") {
            let node = self.or()?;
            if !self.eat(")") {
                return Err(self.error("`)`"));
            }
            node
        } else {
            self.test()?
        };
        self.depth -= 1;
        Ok(node)
    }

    fn test(&mut self) -> Result<Node, FilterError> {
        let name = self
            .word()
            .ok_or_else(|| self.error("a tag name, `!` or `(`"))?;
        if self.eat("!=") {
            let value = self.word().ok_or_else(|| self.error("a value"))?;
            return Ok(Node::Not(Box::new(Node::Is(name, value))));
        }
        if self.eat("=") {
            let value = self.word().ok_or_else(|| self.error("a value"))?;
            return Ok(Node::Is(name, value));
        }
        Ok(Node::Has(name))
    }

    fn word(&mut self) -> Option<String> {
        self.skip_space();
        let start = self.at;
        while self
            .text
            .get(self.at)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b))
        {
            self.at += 1;
        }
        (self.at > start).then(|| String::from_utf8_lossy(&self.text[start..self.at]).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tags(list: &[(&str, &str)]) -> Tags {
        list.iter().copied().collect()
    }

    #[test]
    fn tests_combine_with_precedence() {
        let gpu_eu = tags(&[("gpu", ""), ("zone", "eu")]);
        let eu = tags(&[("zone", "eu")]);
        let gold_us = tags(&[("zone", "us"), ("tier", "gold")]);
        let cases = [
            ("", [true, true, true]),
            ("gpu", [true, false, false]),
            ("zone=eu", [true, true, false]),
            ("zone!=eu", [false, false, true]),
            ("!gpu", [false, true, true]),
            ("gpu || tier=gold && zone=us", [true, false, true]),
            ("(gpu || tier=gold) && zone=eu", [true, false, false]),
            ("!(zone=eu && gpu)", [false, true, true]),
            ("  zone = eu&&!  gpu ", [false, true, false]),
        ];
        for (text, expected) in cases {
            let filter: Filter = text.parse().unwrap();
            let got = [&gpu_eu, &eu, &gold_us].map(|t| filter.matches(t));
            assert_eq!(got, expected, "{text:?} parsed as {filter}");
        }
    }

    #[test]
    fn bad_filters_say_where_and_what() {
        for (text, at) in [
            ("zone=", 5),
            ("(gpu", 4),
            ("gpu &&", 6),
            ("gpu ||| x", 6),
            ("a b", 2),
            ("=x", 0),
        ] {
            let err = text.parse::<Filter>().unwrap_err();
            assert_eq!(err.at, at, "{text:?}: {err}");
        }
        let deep = format!("{}gpu{}", "(".repeat(100), ")".repeat(100));
        assert!(deep.parse::<Filter>().is_err());
        assert!("x".repeat(MAX_FILTER_LEN + 1).parse::<Filter>().is_err());
    }

    proptest! {
        #[test]
        fn any_text_parses_or_fails_cleanly(text in "[a-z=!&|() ]{0,40}") {
            if let Ok(filter) = text.parse::<Filter>() {
                // What it prints parses to the same filter.
                let again: Filter = filter.to_string().parse().unwrap();
                prop_assert_eq!(&again, &filter);
            }
        }
    }
}
