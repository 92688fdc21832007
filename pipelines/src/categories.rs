//! The category schema shipped with souk (`pipelines/categories.toml`): which categories
//! a product may be listed in, and which typed attributes each takes.
//!
//! A product's category must be a leaf (a listed path no other listed path starts
//! with). A leaf's attributes are its own plus those of every listed path above it
//! (`home` → `home/kitchen` → `home/kitchen/mugs`); a key is defined once along a
//! path. [`schema`] is the shipped schema, parsed once; its unit tests keep it valid.
//!
//! ```
//! use souk_pipelines::categories::{self, AttrKind};
//! let mugs = categories::schema().leaf("home/kitchen/mugs").expect("a leaf");
//! let capacity = mugs.attribute("capacity_ml").expect("declared");
//! assert!(capacity.required);
//! assert!(matches!(capacity.kind, AttrKind::Integer { min: 50, max: 2000 }));
//! assert!(mugs.attribute("brand").is_some(), "inherited from `home`");
//! assert!(categories::schema().leaf("home/kitchen").is_none(), "not a leaf");
//! ```

use crate::catalog::AttrValue;
use serde::Serialize;
use std::{collections::BTreeMap, sync::LazyLock};

/// The schema file, compiled in.
pub const SHIPPED: &str = include_str!("../categories.toml");

/// Longest text attribute a schema may declare (characters).
pub const MAX_TEXT_ATTR_LEN: usize = 500;
/// Longest category path.
pub const MAX_PATH_LEN: usize = 200;

/// The shipped schema, parsed on first use.
///
/// # Panics
/// Never in a tested build: `the_shipped_schema_loads` parses the same text.
#[allow(clippy::expect_used)]
pub fn schema() -> &'static Schema {
    static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
        Schema::from_toml(SHIPPED).expect("pipelines/categories.toml is valid (unit-tested)")
    });
    &SCHEMA
}

/// The type (and bounds) of one attribute.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum AttrKind {
    /// Free text of at most `max_len` characters, without control characters.
    Text {
        max_len: usize,
    },
    /// A whole number in `min..=max`.
    Integer {
        min: i64,
        max: i64,
    },
    /// A number (a whole one too) in `min..=max`.
    Number {
        min: f64,
        max: f64,
    },
    Bool,
    /// One of `values`.
    Enum {
        values: Vec<String>,
    },
}

/// One attribute a category takes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttrSpec {
    pub key: String,
    #[serde(flatten)]
    pub kind: AttrKind,
    pub required: bool,
}

/// A leaf category with every attribute it takes (inherited ones included), sorted by key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Category {
    pub path: String,
    pub attributes: Vec<AttrSpec>,
}

impl Category {
    /// The spec of `key`, if this category takes it.
    pub fn attribute(&self, key: &str) -> Option<&AttrSpec> {
        self.attributes.binary_search_by(|a| a.key.as_str().cmp(key)).ok().map(|i| &self.attributes[i])
    }
}

/// The leaf categories and their attributes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schema {
    leaves: BTreeMap<String, Category>,
}

/// Why a schema file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("category schema: {0}")]
pub struct SchemaError(pub String);

impl Schema {
    /// Parse and check a schema file (see `pipelines/categories.toml` for the format).
    pub fn from_toml(text: &str) -> Result<Schema, SchemaError> {
        let file: raw::File = toml::from_str(text).map_err(|e| SchemaError(e.to_string()))?;
        let mut declared: BTreeMap<String, Vec<AttrSpec>> = BTreeMap::new();
        for (path, node) in file.categories {
            check_path(&path).map_err(|why| SchemaError(format!("{path:?}: {why}")))?;
            let mut specs = Vec::with_capacity(node.attributes.len());
            for attr in node.attributes {
                specs.push(attr.into_spec().map_err(|why| SchemaError(format!("{path}: {why}")))?);
            }
            declared.insert(path, specs);
        }
        let mut leaves = BTreeMap::new();
        for path in declared.keys() {
            let below = format!("{path}/");
            if declared.keys().any(|other| other.starts_with(&below)) {
                continue;
            }
            let mut attributes: BTreeMap<String, AttrSpec> = BTreeMap::new();
            for ancestor in ancestors(path) {
                for spec in declared.get(ancestor).into_iter().flatten() {
                    if attributes.insert(spec.key.clone(), spec.clone()).is_some() {
                        return Err(SchemaError(format!(
                            "{path}: attribute {:?} is defined twice along the path",
                            spec.key
                        )));
                    }
                }
            }
            let attributes = attributes.into_values().collect();
            leaves.insert(path.clone(), Category { path: path.clone(), attributes });
        }
        if leaves.is_empty() {
            return Err(SchemaError("no categories".into()));
        }
        Ok(Schema { leaves })
    }

    /// The leaf category at `path`, if there is one.
    pub fn leaf(&self, path: &str) -> Option<&Category> {
        self.leaves.get(path)
    }

    /// Every leaf category, by path.
    pub fn leaves(&self) -> impl Iterator<Item = &Category> {
        self.leaves.values()
    }
}

/// `a/b/c` → `a`, `a/b`, `a/b/c`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(|(i, _)| &path[..i]).chain(std::iter::once(path))
}

/// A category path: segments of `a-z 0-9 -`, joined by `/`.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return Err("a category path has 1-200 characters");
    }
    let segment_ok = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !path.split('/').all(segment_ok) {
        return Err("a category path is segments of a-z 0-9 - joined by /");
    }
    Ok(())
}

/// An attribute key: 1-64 of `a-z 0-9 _`, starting with a letter.
pub fn check_attr_key(key: &str) -> Result<(), &'static str> {
    let ok = key.len() <= 64
        && key.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok { Ok(()) } else { Err("an attribute key is 1-64 of a-z 0-9 _, starting with a letter") }
}

impl AttrSpec {
    /// Check `value` against this spec: `Err(message for the client)`.
    pub fn check(&self, value: &AttrValue) -> Result<(), String> {
        match (&self.kind, value) {
            (AttrKind::Text { max_len }, AttrValue::Text(s)) => {
                if s.chars().count() > *max_len {
                    Err(format!("at most {max_len} characters"))
                } else if s.trim().is_empty() {
                    Err("must not be blank".into())
                } else {
                    crate::catalog::check_text(s).map_err(str::to_owned)
                }
            }
            (AttrKind::Integer { min, max }, AttrValue::Int(n)) => {
                in_range(*n as f64, *min as f64, *max as f64)
            }
            (AttrKind::Number { min, max }, AttrValue::Int(n)) => in_range(*n as f64, *min, *max),
            (AttrKind::Number { min, max }, AttrValue::Number(n)) => in_range(*n, *min, *max),
            (AttrKind::Bool, AttrValue::Bool(_)) => Ok(()),
            (AttrKind::Enum { values }, AttrValue::Text(s)) => {
                if values.iter().any(|v| v == s) {
                    Ok(())
                } else {
                    Err(format!("must be one of {}", values.join(", ")))
                }
            }
            (kind, _) => Err(format!("must be {}", kind.describe())),
        }
    }
}

impl AttrKind {
    fn describe(&self) -> &'static str {
        match self {
            AttrKind::Text { .. } => "text",
            AttrKind::Integer { .. } => "an integer",
            AttrKind::Number { .. } => "a number",
            AttrKind::Bool => "true or false",
            AttrKind::Enum { .. } => "one of the listed texts",
        }
    }
}

fn in_range(n: f64, min: f64, max: f64) -> Result<(), String> {
    if n.is_finite() && (min..=max).contains(&n) {
        Ok(())
    } else {
        Err(format!("must be between {min} and {max}"))
    }
}

/// The file as written, before it is checked.
mod raw {
    use super::{AttrKind, AttrSpec, MAX_TEXT_ATTR_LEN, check_attr_key};
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        pub categories: BTreeMap<String, Node>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Node {
        #[serde(default)]
        pub attributes: Vec<Attr>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    pub struct Attr {
        key: String,
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        required: bool,
        max_len: Option<usize>,
        min: Option<f64>,
        max: Option<f64>,
        values: Option<Vec<String>>,
    }

    impl Attr {
        pub fn into_spec(self) -> Result<AttrSpec, String> {
            let key = self.key;
            check_attr_key(&key).map_err(|why| format!("{key:?}: {why}"))?;
            let bounds = |whole: bool| match (self.min, self.max) {
                (Some(min), Some(max))
                    if min <= max && (!whole || (min.fract() == 0.0 && max.fract() == 0.0)) =>
                {
                    Ok((min, max))
                }
                _ => Err(format!("{key}: needs min <= max{}", if whole { ", whole numbers" } else { "" })),
            };
            let unused = |what: &str, set: bool| {
                if set { Err(format!("{key}: {what} does not apply")) } else { Ok(()) }
            };
            let kind = self.kind.as_str();
            unused("max-len", kind != "text" && self.max_len.is_some())?;
            unused(
                "min/max",
                !matches!(kind, "integer" | "number") && (self.min.is_some() || self.max.is_some()),
            )?;
            unused("values", kind != "enum" && self.values.is_some())?;
            let kind = match kind {
                "text" => match self.max_len {
                    Some(n @ 1..=MAX_TEXT_ATTR_LEN) => AttrKind::Text { max_len: n },
                    _ => return Err(format!("{key}: text needs max-len 1-{MAX_TEXT_ATTR_LEN}")),
                },
                "integer" => {
                    let (min, max) = bounds(true)?;
                    AttrKind::Integer { min: min as i64, max: max as i64 }
                }
                "number" => {
                    let (min, max) = bounds(false)?;
                    AttrKind::Number { min, max }
                }
                "bool" => AttrKind::Bool,
                "enum" => match self.values {
                    Some(values) if !values.is_empty() && values.iter().all(|v| !v.is_empty()) => {
                        AttrKind::Enum { values }
                    }
                    _ => return Err(format!("{key}: enum needs non-empty values")),
                },
                other => return Err(format!("{key}: unknown type {other:?}")),
            };
            Ok(AttrSpec { key, kind, required: self.required })
        }
    }
}
