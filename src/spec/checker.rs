//! The walk over the parsed file: every lookup records its problems and carries on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use miette::SourceSpan;
use saphyr::{LoadableYamlNode, MarkedYaml, Marker, Scalar, YamlData};

use super::rules::*;
use super::*;

mod sections;

/// Where a node is: its first character and the character after it.
#[derive(Clone, Copy)]
struct At {
    start: Marker,
    end: Marker,
}

impl At {
    fn of(node: &MarkedYaml<'_>) -> At {
        At {
            start: node.span.start,
            end: node.span.end,
        }
    }

    fn empty(start: Marker) -> At {
        At { start, end: start }
    }
}

/// A key of a mapping, with its value.
#[derive(Clone, Copy)]
struct Field<'n, 'i> {
    key: At,
    value: &'n MarkedYaml<'i>,
}

/// The entries of one mapping of the file. Keys that are not strings or not known have been
/// reported when it was built.
struct Section<'n, 'i> {
    path: String,
    /// Where a missing key is reported: the key that opened this section, or the file's start.
    at: At,
    /// Every known key, with its value, even a null one.
    entries: Vec<(String, Field<'n, 'i>)>,
}

impl<'n, 'i> Section<'n, 'i> {
    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn entry(&self, key: &str) -> Option<Field<'n, 'i>> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, field)| *field)
    }

    /// The key's value; `None` when it is absent or written with no value (`ami:`), which
    /// counts as absent.
    fn get(&self, key: &str) -> Option<Field<'n, 'i>> {
        self.entry(key)
            .filter(|field| !matches!(field.value.data, YamlData::Value(Scalar::Null)))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Walks the parsed file and records every problem it finds.
pub(super) struct Checker<'s> {
    pub(super) source: &'s str,
    /// The stack file's directory: files it names are relative to it.
    pub(super) dir: &'s Path,
    pub(super) problems: Vec<Problem>,
}

impl<'s> Checker<'s> {
    fn report(&mut self, path: &str, at: At, invalid: Invalid) {
        let start = self.byte_offset(at.start.index());
        let mut end = self.byte_offset(at.end.index()).max(start);
        // A block mapping's span runs to the next key: underline its first line only.
        if let Some(newline) = self.source[start..end].find('\n') {
            end = start + newline;
        }
        self.problems.push(Problem {
            path: path.to_string(),
            line: at.start.line().max(1),
            column: at.start.col() + 1,
            message: invalid.message,
            help: invalid.help,
            span: Some(SourceSpan::new(start.into(), end - start)),
        });
    }

    /// saphyr counts positions in characters, miette in bytes.
    fn byte_offset(&self, char_index: usize) -> usize {
        self.source
            .char_indices()
            .nth(char_index)
            .map_or(self.source.len(), |(byte, _)| byte)
    }

    /// The text of a node as written in the file.
    fn raw(&self, at: At) -> &'s str {
        let start = self.byte_offset(at.start.index());
        let end = self.byte_offset(at.end.index()).max(start);
        &self.source[start..end]
    }

    /// Records a rule's verdict on a value.
    fn check<T>(&mut self, path: &str, at: At, rule: Rule<T>) -> Option<T> {
        rule.map_err(|invalid| self.report(path, at, invalid)).ok()
    }

    fn type_error(&mut self, path: &str, node: &MarkedYaml<'_>, expected: &str) {
        let found = kind(node);
        let mut invalid = Invalid::new(format!("expected {expected}, found {found}"));
        if let YamlData::Value(Scalar::String(text)) = &node.data
            && text.parse::<i64>().is_ok()
            && expected.contains("number")
        {
            invalid = invalid.help(format!("remove the quotes: {text}"));
        } else if let YamlData::Tagged(..) = &node.data {
            invalid = invalid.help("YAML tags such as `!foo` are not supported here");
        }
        self.report(path, At::of(node), invalid);
    }

    /// Reads a mapping, reporting keys that are not strings and keys not in `known`.
    fn section<'n, 'i>(
        &mut self,
        node: &'n MarkedYaml<'i>,
        at: At,
        path: &str,
        known: &[&str],
    ) -> Option<Section<'n, 'i>> {
        let YamlData::Mapping(mapping) = &node.data else {
            let expected = format!("a mapping with the keys {}", known.join(", "));
            self.type_error(path, node, &expected);
            return None;
        };
        let mut entries = Vec::new();
        for (key, value) in mapping.iter() {
            let Some(name) = self.key(path, key) else {
                continue;
            };
            if !known.contains(&name.as_str()) {
                let help = match did_you_mean(&name, known) {
                    Some(guess) => format!("did you mean `{guess}`?"),
                    None => format!("the keys here are {}", known.join(", ")),
                };
                let message = match path {
                    "" => format!("unknown key `{name}`"),
                    section => format!("unknown key `{name}` in `{section}`"),
                };
                self.report(
                    &join(path, &name),
                    At::of(key),
                    Invalid::new(message).help(help),
                );
                continue;
            }
            let field = Field {
                key: At::of(key),
                value,
            };
            entries.push((name, field));
        }
        Some(Section {
            path: path.to_string(),
            at,
            entries,
        })
    }

    /// A mapping key as a string; keys written as numbers or booleans are taken as written.
    fn key(&mut self, path: &str, key: &MarkedYaml<'_>) -> Option<String> {
        match &key.data {
            YamlData::Value(Scalar::String(name)) => Some(name.to_string()),
            YamlData::Value(Scalar::Integer(_) | Scalar::FloatingPoint(_) | Scalar::Boolean(_)) => {
                Some(self.raw(At::of(key)).to_string())
            }
            _ => {
                self.type_error(path, key, "a key that is a string");
                None
            }
        }
    }

    /// A nested section that may be absent (then every key takes its default).
    fn subsection<'n, 'i>(
        &mut self,
        parent: &Section<'n, 'i>,
        key: &str,
        known: &[&str],
    ) -> Option<Section<'n, 'i>> {
        let path = parent.path(key);
        match parent.get(key) {
            Some(field) => self.section(field.value, field.key, &path, known),
            None => Some(Section {
                path,
                at: parent.at,
                entries: Vec::new(),
            }),
        }
    }

    fn required<'n, 'i, T>(
        &mut self,
        section: &Section<'n, 'i>,
        key: &str,
        read: impl FnOnce(&mut Self, &str, Field<'n, 'i>) -> Option<T>,
    ) -> Option<T> {
        let path = section.path(key);
        if let Some(field) = section.get(key) {
            return read(self, &path, field);
        }
        // Point at the key when it is there without a value, else at the section.
        let at = section.entry(key).map_or(section.at, |field| field.key);
        self.report(&path, at, Invalid::new("is required"));
        None
    }

    fn optional<'n, 'i, T>(
        &mut self,
        section: &Section<'n, 'i>,
        key: &str,
        default: T,
        read: impl FnOnce(&mut Self, &str, &'n MarkedYaml<'i>) -> Option<T>,
    ) -> Option<T> {
        match section.get(key) {
            Some(field) => read(self, &section.path(key), field.value),
            None => Some(default),
        }
    }

    /// An optional whole number within `bounds`, `default` when absent.
    fn optional_integer<T: TryFrom<i64>>(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        default: T,
        bounds: (i64, i64),
        why: &str,
    ) -> Option<T> {
        self.optional(section, key, default, |ck, p, n| {
            ck.integer(p, n, bounds, why)
        })
    }

    fn boolean(&mut self, path: &str, node: &MarkedYaml<'_>) -> Option<bool> {
        if let YamlData::Value(Scalar::Boolean(value)) = node.data {
            Some(value)
        } else {
            self.type_error(path, node, "true or false");
            None
        }
    }

    fn string(&mut self, path: &str, node: &MarkedYaml<'_>) -> Option<String> {
        match &node.data {
            YamlData::Value(Scalar::String(text)) => Some(text.to_string()),
            _ => {
                self.type_error(path, node, "a string");
                None
            }
        }
    }

    /// A string, or a number or boolean taken as written (`engine_version: 7.1`, tag values).
    fn text(&mut self, path: &str, node: &MarkedYaml<'_>) -> Option<String> {
        match &node.data {
            YamlData::Value(Scalar::String(text)) => Some(text.to_string()),
            YamlData::Value(Scalar::Integer(_) | Scalar::FloatingPoint(_) | Scalar::Boolean(_)) => {
                Some(self.raw(At::of(node)).to_string())
            }
            _ => {
                self.type_error(path, node, "a string");
                None
            }
        }
    }

    /// A whole number within `min..=max`; `why` says where the bounds come from.
    fn integer<T: TryFrom<i64>>(
        &mut self,
        path: &str,
        node: &MarkedYaml<'_>,
        (min, max): (i64, i64),
        why: &str,
    ) -> Option<T> {
        let YamlData::Value(Scalar::Integer(value)) = node.data else {
            self.type_error(path, node, "a whole number");
            return None;
        };
        let rule = if (min..=max).contains(&value) {
            T::try_from(value).map_err(|_| Invalid::new("is out of range"))
        } else {
            Err(Invalid::new(format!("must be from {min} to {max}, not {value}")).help(why))
        };
        self.check(path, At::of(node), rule)
    }

    /// The sign-in public key file: it must exist and hold an Ed25519 or P-256 public
    /// key in PEM. Returns its path (relative to the stack file's directory) and text.
    fn public_key_file(&mut self, path: &str, at: At, text: &str) -> Option<(PathBuf, String)> {
        let file = self.dir.join(text);
        let help = "give the PEM file of your identity service's public key, relative to                     the stack file; export it with `openssl pkey -in private.pem -pubout`";
        let rule = match std::fs::read_to_string(&file) {
            Err(err) => Err(Invalid::new(format!(
                "cannot read `{text}` ({}): {err}",
                file.display()
            ))
            .help(help)),
            Ok(pem) => match crate::identity::PublicKey::from_pem(&pem) {
                Ok(_) => Ok((file, pem)),
                Err(why) => Err(Invalid::new(format!("`{text}` {why}")).help(help)),
            },
        };
        self.check(path, at, rule)
    }

    fn tags(&mut self, path: &str, node: &MarkedYaml<'_>) -> Option<BTreeMap<String, String>> {
        let YamlData::Mapping(mapping) = &node.data else {
            self.type_error(path, node, "a mapping of tag keys to values");
            return None;
        };
        let mut ok = true;
        if mapping.len() > MAX_USER_TAGS {
            let invalid = Invalid::new(format!(
                "has {} tags, at most {MAX_USER_TAGS} are allowed",
                mapping.len()
            ))
            .help("AWS allows 50 tags per resource and realtime-stack needs the rest");
            self.report(path, At::of(node), invalid);
            ok = false;
        }
        let mut tags = BTreeMap::new();
        for (key, value) in mapping.iter() {
            let Some(name) = self.key(path, key) else {
                ok = false;
                continue;
            };
            let tag_path = join(path, &name);
            let key_ok = self.check(&tag_path, At::of(key), tag_key(&name));
            let value = if let YamlData::Value(Scalar::Null) = value.data {
                let invalid = Invalid::new("has no value")
                    .help(format!("write `{name}: \"\"` for an empty value"));
                self.report(&tag_path, At::of(key), invalid);
                None
            } else {
                self.text(&tag_path, value)
                    .and_then(|text| self.check(&tag_path, At::of(value), tag_value(&text)))
            };
            match (key_ok, value) {
                (Some(()), Some(value)) => {
                    tags.insert(name, value);
                }
                _ => ok = false,
            }
        }
        ok.then_some(tags)
    }
}

/// What a node is, in words, for type errors.
fn kind(node: &MarkedYaml<'_>) -> &'static str {
    match &node.data {
        YamlData::Value(Scalar::Null) => "nothing",
        YamlData::Value(Scalar::Boolean(_)) => "a boolean",
        YamlData::Value(Scalar::Integer(_)) => "a whole number",
        YamlData::Value(Scalar::FloatingPoint(_)) => "a number with a fraction",
        YamlData::Value(Scalar::String(_)) | YamlData::Representation(..) => "a string",
        YamlData::Sequence(_) => "a list",
        YamlData::Mapping(_) => "a mapping",
        YamlData::Tagged(..) => "a tagged value",
        YamlData::Alias(_) | YamlData::BadValue => "a value that cannot be read",
    }
}
