//! JSON request bodies of orders, carts and checkouts: strict about their shape.
//!
//! A body is read as a JSON value first (a key given twice is refused, as catalog
//! bodies are: another parser would read the other value), then every field the
//! request type does not know is named (`lines[1].unit_price_minor`) in a 400
//! `unknown-field` problem — the client cannot, for one, set a price — and only then is
//! the value read as the request type (a wrong type is 422 `invalid-body`).

use axum::{body::Bytes, extract::rejection::BytesRejection, http::HeaderMap};
use serde::de::DeserializeOwned;
use serde_json::Value;
use souk_pipelines::orders::FieldError;

use crate::Problem;

/// The fields a body may have: its own, and those of the items of its list fields.
pub(crate) struct Shape {
    pub fields: &'static [&'static str],
    pub lists: &'static [(&'static str, &'static [&'static str])],
}

impl Shape {
    /// Every field of `value` this shape does not have, by its path.
    fn unknown_fields(&self, value: &Value) -> Vec<FieldError> {
        let mut unknown = Vec::new();
        let Some(object) = value.as_object() else { return unknown };
        for (key, field) in object {
            if !self.fields.contains(&key.as_str()) {
                unknown.push(unknown_field(key.clone(), key));
                continue;
            }
            let Some((_, item_fields)) = self.lists.iter().find(|(list, _)| list == key) else { continue };
            for (i, item) in field.as_array().into_iter().flatten().enumerate() {
                for item_key in item.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !item_fields.contains(&item_key.as_str()) {
                        unknown.push(unknown_field(format!("{key}[{i}].{item_key}"), item_key));
                    }
                }
            }
        }
        unknown
    }
}

fn unknown_field(path: String, key: &str) -> FieldError {
    let message = if key.contains("price") || key.contains("total") || key == "currency" || key == "seller" {
        "unknown field: prices, currency and sellers come from the catalog"
    } else {
        "unknown field"
    };
    FieldError::new(path, message)
}

/// Read a JSON body of `shape` as `T`: 415 unless `application/json`, 413 over the
/// limit, 400 when it is not JSON, repeats a key or has a field `shape` lacks, 422
/// when a field has the wrong type or a required one is missing.
pub(crate) fn read<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    shape: &Shape,
) -> Result<T, Problem> {
    crate::problem::require_json(headers)?;
    let body = crate::problem::body_bytes(body)?;
    let value = souk_pipelines::catalog::parse_json(&body)
        .map_err(|e| Problem::bad_request("malformed-json", e.to_string()))?;
    let unknown = shape.unknown_fields(&value);
    if !unknown.is_empty() {
        return Err(Problem::bad_request("unknown-field", "the body has fields this request does not take")
            .errors(unknown));
    }
    serde_json::from_value(value).map_err(|e| Problem::unprocessable("invalid-body", e.to_string()))
}
