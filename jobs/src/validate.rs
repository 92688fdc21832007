//! One import row checked like an API write: the SKU, then the product against the
//! shipped category schema. A reason names every bad field.

use souk_pipelines::catalog::ProductFields;

/// Longest SKU.
pub const MAX_SKU_LEN: usize = 128;

/// `Ok` when the row would be accepted by `PUT /v1/sellers/{seller}/products/{sku}`.
pub fn row(sku: &str, fields: &ProductFields) -> Result<(), String> {
    let mut bad = Vec::new();
    if let Err(why) = check_sku(sku) {
        bad.push(format!("sku: {why}"));
    }
    bad.extend(product(fields));
    if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
}

fn check_sku(sku: &str) -> Result<(), &'static str> {
    if sku.is_empty() {
        return Err("missing");
    }
    if sku.len() > MAX_SKU_LEN {
        return Err("longer than 128 bytes");
    }
    if !sku.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err("only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// The field checks of a product (until the catalog's category validation is merged,
/// the checks that do not need the schema).
fn product(f: &ProductFields) -> Vec<String> {
    let mut bad = Vec::new();
    if f.title.trim().is_empty() {
        bad.push("title: missing".to_owned());
    }
    if f.category.trim().is_empty() {
        bad.push("category: missing".to_owned());
    }
    if f.price_minor < 0 {
        bad.push("price_minor: must not be negative".to_owned());
    }
    if f.stock < 0 {
        bad.push("stock: must not be negative".to_owned());
    }
    for (i, url) in f.images.iter().enumerate() {
        if !url.starts_with("https://") {
            bad.push(format!("images[{i}]: must be an absolute https URL"));
        }
    }
    bad
}
