//! Every rule a product write must follow, each violation reported (not just the first).
//!
//! Two layers: `from_json` reads a request body (or an import row) field by field, so a
//! wrong JSON type, an unknown field or a missing one is named like any other bad
//! field; `validate` then checks the values, attributes against the shipped category
//! schema. The catalog pool checks a command again (`WriteProduct::validate`): an import
//! or a seed could skip the ingress, and a patch is only fully checkable against the
//! product it lands on.

use super::{AttrValue, ProductChange, ProductFields, ProductPatch, WriteProduct};
use crate::{
    Currency,
    categories::{self, Schema},
    orders::{FieldError, MAX_SKU_LEN},
    pan::looks_like_pan,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Longest title (characters).
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest description (characters).
pub const MAX_DESCRIPTION_CHARS: usize = 5000;
/// Highest price of one unit, in minor units (ten billion in major units).
pub const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;
/// Most units on hand.
pub const MAX_STOCK: i64 = 1_000_000_000;
/// Most images per product.
pub const MAX_IMAGES: usize = 10;
/// Longest image URL (bytes).
pub const MAX_IMAGE_URL_BYTES: usize = 2048;
/// Most attributes per product (no shipped category declares this many).
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest seller id (bytes), like a token's `sub`.
pub const MAX_SELLER_ID_LEN: usize = 128;

const PAN_MESSAGE: &str = "looks like a card number: souk accepts payment tokens only";

/// Collects field errors.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }
    fn check(&mut self, field: impl Into<String>, result: Result<(), impl Into<String>>) {
        if let Err(message) = result {
            self.add(field, message);
        }
    }
    fn done(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() { Ok(()) } else { Err(self.0) }
    }
}

/// A SKU: 1-64 of `A-Z a-z 0-9 - _ .`, and not a card number (as for order lines).
pub fn check_sku(sku: &str) -> Result<(), &'static str> {
    let ok = !sku.is_empty()
        && sku.len() <= MAX_SKU_LEN
        && sku.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        Err("1-64 characters of A-Z a-z 0-9 - _ .")
    } else if looks_like_pan(sku) {
        Err(PAN_MESSAGE)
    } else {
        Ok(())
    }
}

/// A seller id (in a path, a token's `sellers`, a command): 1-128 bytes, no control
/// characters, like a token's `sub`.
pub fn check_seller_id(seller: &str) -> Result<(), &'static str> {
    if seller.is_empty() || seller.len() > MAX_SELLER_ID_LEN || seller.chars().any(char::is_control) {
        Err("a seller id has 1-128 bytes and no control characters")
    } else {
        Ok(())
    }
}

/// One line of free text: no control characters, no card number.
pub fn check_text(text: &str) -> Result<(), &'static str> {
    if text.chars().any(char::is_control) {
        Err("must not contain control characters")
    } else if looks_like_pan(text) {
        Err(PAN_MESSAGE)
    } else {
        Ok(())
    }
}

fn check_title(title: &str) -> Result<(), String> {
    let n = title.chars().count();
    if title.trim().is_empty() {
        Err("must not be blank".into())
    } else if n > MAX_TITLE_CHARS {
        Err(format!("at most {MAX_TITLE_CHARS} characters"))
    } else {
        check_text(title).map_err(str::to_owned)
    }
}

fn check_description(text: &str) -> Result<(), String> {
    if text.chars().count() > MAX_DESCRIPTION_CHARS {
        Err(format!("at most {MAX_DESCRIPTION_CHARS} characters"))
    } else if text.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        Err("must not contain control characters other than line breaks and tabs".into())
    } else if looks_like_pan(text) {
        Err(PAN_MESSAGE.into())
    } else {
        Ok(())
    }
}

fn check_price(price_minor: i64) -> Result<(), String> {
    if price_minor < 0 {
        Err("must not be negative".into())
    } else if price_minor > MAX_PRICE_MINOR {
        Err(format!("must be at most {MAX_PRICE_MINOR} minor units"))
    } else {
        Ok(())
    }
}

fn check_stock(stock: i64) -> Result<(), String> {
    if (0..=MAX_STOCK).contains(&stock) { Ok(()) } else { Err(format!("must be between 0 and {MAX_STOCK}")) }
}

/// An absolute `https` URL of at most 2048 bytes, with a host and no credentials.
/// Validated only: souk never fetches it.
pub fn check_image_url(raw: &str) -> Result<(), &'static str> {
    if raw.len() > MAX_IMAGE_URL_BYTES {
        return Err("at most 2048 bytes");
    }
    // The URL parser silently drops tabs, newlines and surrounding spaces: refuse them.
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters");
    }
    let url = url::Url::parse(raw).map_err(|_| "must be an absolute https URL")?;
    if url.scheme() != "https" || url.host_str().is_none_or(str::is_empty) {
        return Err("must be an absolute https URL");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials");
    }
    if looks_like_pan(raw) {
        return Err(PAN_MESSAGE);
    }
    Ok(())
}

/// An attribute value's own rules, whatever the category (text: no control characters,
/// no card number).
fn check_value_alone(value: &AttrValue) -> Result<(), &'static str> {
    match value {
        AttrValue::Text(s) => check_text(s),
        AttrValue::Number(n) if !n.is_finite() => Err("must be a finite number"),
        _ => Ok(()),
    }
}

impl ProductFields {
    /// Check every rule against the shipped category schema.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        self.validate_in(categories::schema())
    }

    /// Check every rule against `schema`; returns all violations.
    pub fn validate_in(&self, schema: &Schema) -> Result<(), Vec<FieldError>> {
        let mut errors = Errors::default();
        errors.check("title", check_title(&self.title));
        errors.check("description", check_description(&self.description));
        let leaf = match categories::check_path(&self.category) {
            Err(why) => {
                errors.add("category", why);
                None
            }
            Ok(()) => {
                let leaf = schema.leaf(&self.category);
                if leaf.is_none() {
                    errors.add("category", "unknown category: not a leaf of the category schema");
                }
                leaf
            }
        };
        if self.attributes.len() > MAX_ATTRIBUTES {
            errors.add("attributes", format!("at most {MAX_ATTRIBUTES} attributes"));
        }
        for (key, value) in &self.attributes {
            let field = format!("attributes.{key}");
            if let Err(why) = categories::check_attr_key(key) {
                errors.add(field, why);
                continue;
            }
            match leaf {
                Some(leaf) => match leaf.attribute(key) {
                    Some(spec) => errors.check(field, spec.check(value)),
                    None => errors.add(field, format!("not an attribute of {}", leaf.path)),
                },
                // The category is wrong already: check what can be checked alone.
                None => errors.check(field, check_value_alone(value)),
            }
        }
        for spec in leaf.iter().flat_map(|leaf| &leaf.attributes) {
            if spec.required && !self.attributes.contains_key(&spec.key) {
                errors.add(format!("attributes.{}", spec.key), format!("required in {}", self.category));
            }
        }
        errors.check("price_minor", check_price(self.price_minor));
        errors.check("stock", check_stock(self.stock));
        if self.images.len() > MAX_IMAGES {
            errors.add("images", format!("at most {MAX_IMAGES} images"));
        }
        for (i, url) in self.images.iter().enumerate() {
            errors.check(format!("images[{i}]"), check_image_url(url));
        }
        errors.done()
    }

    /// Read a body (or an import row) field by field and validate it: a wrong JSON type,
    /// an unknown or missing field is reported with the other bad fields.
    pub fn from_json(value: &Value) -> Result<ProductFields, Vec<FieldError>> {
        let Some(object) = value.as_object() else {
            return Err(vec![FieldError { field: "body".into(), message: "must be a JSON object".into() }]);
        };
        let mut read = Reader::new(
            object,
            &["title", "description", "category", "attributes", "price_minor", "currency", "stock", "images"],
        );
        let title = read.required::<String>("title", "text");
        let description = read.optional::<String>("description", "text");
        let category = read.required::<String>("category", "text (a category path)");
        let attributes =
            read.attributes(false).map(|a| a.into_iter().filter_map(|(k, v)| Some((k, v?))).collect());
        let price_minor = read.required::<i64>("price_minor", "an integer (minor units)");
        let currency = read.required::<Currency>("currency", "an ISO 4217 code such as EUR");
        let stock = read.required::<i64>("stock", "an integer");
        let images = read.images();
        let fields = ProductFields {
            title: title.unwrap_or_default(),
            description: description.flatten().unwrap_or_default(),
            category: category.unwrap_or_default(),
            attributes: attributes.unwrap_or_default(),
            price_minor: price_minor.unwrap_or_default(),
            currency: currency.unwrap_or_else(placeholder_currency),
            stock: stock.unwrap_or_default(),
            images: images.unwrap_or_default(),
        };
        read.finish(fields.validate())?;
        Ok(fields)
    }
}

impl ProductPatch {
    /// Check what can be checked without the product: each value's own rules. The
    /// attributes' schema is checked on the patched product ([`ProductPatch::apply_to`]
    /// then [`ProductFields::validate`]).
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Errors::default();
        if self.price_minor.is_none()
            && self.currency.is_none()
            && self.stock.is_none()
            && self.attributes.as_ref().is_none_or(BTreeMap::is_empty)
        {
            errors.add("body", "changes nothing: send price_minor, currency, stock or attributes");
        }
        if let Some(price) = self.price_minor {
            errors.check("price_minor", check_price(price));
        }
        if let Some(stock) = self.stock {
            errors.check("stock", check_stock(stock));
        }
        let attributes = self.attributes.iter().flatten();
        if self.attributes.as_ref().is_some_and(|a| a.len() > MAX_ATTRIBUTES) {
            errors.add("attributes", format!("at most {MAX_ATTRIBUTES} attributes"));
        }
        for (key, value) in attributes {
            let field = format!("attributes.{key}");
            match categories::check_attr_key(key) {
                Err(why) => errors.add(field, why),
                Ok(()) => {
                    if let Some(value) = value {
                        errors.check(field, check_value_alone(value));
                    }
                }
            }
        }
        errors.done()
    }

    /// The product after this patch: attributes set to `null` are removed.
    pub fn apply_to(&self, fields: &ProductFields) -> ProductFields {
        let mut out = fields.clone();
        if let Some(price) = self.price_minor {
            out.price_minor = price;
        }
        if let Some(currency) = self.currency {
            out.currency = currency;
        }
        if let Some(stock) = self.stock {
            out.stock = stock;
        }
        for (key, value) in self.attributes.iter().flatten() {
            match value {
                Some(value) => out.attributes.insert(key.clone(), value.clone()),
                None => out.attributes.remove(key),
            };
        }
        out
    }

    /// [`ProductFields::from_json`] for a patch body.
    pub fn from_json(value: &Value) -> Result<ProductPatch, Vec<FieldError>> {
        let Some(object) = value.as_object() else {
            return Err(vec![FieldError { field: "body".into(), message: "must be a JSON object".into() }]);
        };
        let mut read = Reader::new(object, &["price_minor", "currency", "stock", "attributes"]);
        let patch = ProductPatch {
            price_minor: read.optional::<i64>("price_minor", "an integer (minor units)").flatten(),
            currency: read.optional::<Currency>("currency", "an ISO 4217 code such as EUR").flatten(),
            stock: read.optional::<i64>("stock", "an integer").flatten(),
            attributes: read.attributes(true),
        };
        read.finish(patch.validate())?;
        Ok(patch)
    }
}

impl WriteProduct {
    /// Check the command as the catalog pool receives it: ids, and the change's own
    /// rules (a patch is checked again on the product it lands on).
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Errors::default();
        if self.tenant.is_empty() || self.tenant.len() > 128 || self.tenant.chars().any(char::is_control) {
            errors.add("tenant", "a tenant has 1-128 bytes and no control characters");
        }
        errors.check("seller", check_seller_id(&self.seller));
        errors.check("sku", check_sku(&self.sku));
        if self.expected_version.is_some_and(|v| v < 1) {
            errors.add("expected_version", "versions start at 1");
        }
        let change = match &self.change {
            ProductChange::Put { fields } => fields.validate(),
            ProductChange::Patch { patch } => patch.validate(),
            ProductChange::Delete => Ok(()),
        };
        if let Err(more) = change {
            errors.0.extend(more);
        }
        errors.done()
    }
}

/// Only read when `currency` itself is reported bad.
#[allow(clippy::expect_used)]
fn placeholder_currency() -> Currency {
    "XXX".parse().expect("XXX is ISO 4217")
}

/// Reads an object field by field, keeping a structural error per bad field.
struct Reader<'a> {
    object: &'a Map<String, Value>,
    errors: Errors,
    /// Fields already reported: value rules on their placeholder are not reported too.
    reported: BTreeSet<String>,
}

impl<'a> Reader<'a> {
    fn new(object: &'a Map<String, Value>, known: &[&str]) -> Self {
        let mut reader = Reader { object, errors: Errors::default(), reported: BTreeSet::new() };
        for key in object.keys().filter(|k| !known.contains(&k.as_str())) {
            reader.bad(key.clone(), "unknown field");
        }
        reader
    }

    fn bad(&mut self, field: String, message: impl Into<String>) {
        self.reported.insert(field.clone());
        self.errors.add(field, message);
    }

    fn required<T: DeserializeOwned>(&mut self, field: &str, what: &str) -> Option<T> {
        match self.optional(field, what) {
            Some(Some(v)) => Some(v),
            Some(None) | None if self.reported.contains(field) => None,
            _ => {
                self.bad(field.into(), "is required");
                None
            }
        }
    }

    /// `None`: absent (or bad, reported); `Some(None)`: null.
    fn optional<T: DeserializeOwned>(&mut self, field: &str, what: &str) -> Option<Option<T>> {
        let value = self.object.get(field)?;
        if value.is_null() {
            return Some(None);
        }
        match serde_json::from_value(value.clone()) {
            Ok(v) => Some(Some(v)),
            Err(_) => {
                self.bad(field.into(), format!("must be {what}"));
                None
            }
        }
    }

    /// An object of attribute values (`null` values allowed when `nulls`: a patch
    /// removing a key). Bad values are reported per key and left out.
    fn attributes(&mut self, nulls: bool) -> Option<BTreeMap<String, Option<AttrValue>>> {
        let value = self.object.get("attributes")?;
        let Some(object) = value.as_object() else {
            self.bad("attributes".into(), "must be an object of attribute values");
            return None;
        };
        let mut out = BTreeMap::new();
        for (key, value) in object {
            if value.is_null() && nulls {
                out.insert(key.clone(), None);
                continue;
            }
            match serde_json::from_value::<AttrValue>(value.clone()) {
                Ok(v) if !value.is_null() => {
                    out.insert(key.clone(), Some(v));
                }
                _ => self.bad(format!("attributes.{key}"), "must be text, a number or true/false"),
            }
        }
        Some(out)
    }

    fn images(&mut self) -> Option<Vec<String>> {
        let value = self.object.get("images")?;
        let Some(items) = value.as_array() else {
            self.bad("images".into(), "must be an array of URLs");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(url) => out.push(url.to_owned()),
                None => {
                    self.bad(format!("images[{i}]"), "must be a URL (text)");
                    // Keep indexes of later images as the client numbered them.
                    out.push("https://placeholder.invalid/".into());
                }
            }
        }
        Some(out)
    }

    /// The structural errors, then the value rules' errors on fields not reported yet.
    fn finish(mut self, values: Result<(), Vec<FieldError>>) -> Result<(), Vec<FieldError>> {
        for e in values.err().into_iter().flatten() {
            if !self.reported.contains(&e.field) {
                self.errors.0.push(e);
            }
        }
        self.errors.done()
    }
}
