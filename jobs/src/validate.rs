//! One import row checked exactly like an API write (`PUT
//! /v1/sellers/{seller}/products/{sku}`): the SKU, then the product against the shipped
//! category schema (`souk_pipelines::catalog`). A reason names every bad field.

use serde_json::Value;
use souk_pipelines::{
    catalog::{ProductFields, check_sku},
    orders::FieldError,
};

/// `Ok` when the row would be accepted by the API.
pub fn row(sku: &str, fields: &ProductFields) -> Result<(), String> {
    reason(sku, fields.validate().err().unwrap_or_default())
}

/// Read a JSON row (without its `sku`) field by field and validate it.
pub fn json_row(sku: &str, value: &Value) -> Result<ProductFields, String> {
    let (fields, errors) = match ProductFields::from_json(value) {
        Ok(fields) => (Some(fields), Vec::new()),
        Err(errors) => (None, errors),
    };
    reason(sku, errors)?;
    fields.ok_or_else(|| "invalid product".to_owned())
}

fn reason(sku: &str, errors: Vec<FieldError>) -> Result<(), String> {
    let mut bad: Vec<String> = Vec::new();
    if let Err(why) = check_sku(sku) {
        bad.push(format!("sku: {why}"));
    }
    bad.extend(errors.into_iter().map(|e| format!("{}: {}", e.field, e.message)));
    if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
}
