//! The products a catalog run writes: generated listings, the same for the same seed,
//! and the search documents they become.
//!
//! Listings come from `souk seed catalog`'s generator when it is there; until then a
//! small local one with the same shape (`listing(seed, sellers, i)`), drawing only
//! categories and attribute values the shipped category schema accepts.

use chrono::{DateTime, Utc};
use souk_pipelines::{
    Currency,
    catalog::{AttrValue, ProductFields},
    categories::{self, AttrKind, AttrSpec},
};
use souk_stores::search::SearchDoc;
use std::collections::BTreeMap;

/// One generated listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    pub seller: String,
    pub sku: String,
    pub fields: ProductFields,
}

impl Listing {
    /// The document the index holds for this listing at `version`.
    pub fn doc(&self, tenant: &str, version: i64, updated_at: DateTime<Utc>) -> SearchDoc {
        let f = &self.fields;
        SearchDoc {
            tenant: tenant.to_owned(),
            sku: self.sku.clone(),
            seller: self.seller.clone(),
            version,
            title: f.title.clone(),
            description: f.description.clone(),
            category: f.category.clone(),
            attributes: f.attributes.clone(),
            price_minor: f.price_minor,
            currency: f.currency,
            stock: f.stock,
            updated_at,
        }
    }
}

/// The seller ids of a set made for `sellers` sellers.
pub fn seller_id(i: usize) -> String {
    format!("seller-{:04}", i + 1)
}

/// Listing `i` of the set made by `seed` for `sellers` sellers; depends on (seed, i) only.
pub fn listing(seed: u64, sellers: usize, i: usize) -> Listing {
    let mut rng = Rng(seed.wrapping_mul(0x100_0000_01B3).wrapping_add(i as u64) ^ 0x9E37_79B9_7F4A_7C15);
    // A few sellers list much more than most.
    let s = (rng.unit().powi(2) * sellers.max(1) as f64) as usize;
    let leaves: Vec<_> = categories::schema().leaves().collect();
    let c = leaves[rng.below(leaves.len())];
    let leaf = c.path.rsplit('/').next().unwrap_or("item");
    let title = format!("{} {} {}", rng.pick(BRANDS), rng.pick(ADJECTIVES), leaf.replace('-', " "));
    let mut attributes = BTreeMap::new();
    for spec in &c.attributes {
        if spec.required || rng.below(10) < 7 {
            attributes.insert(spec.key.clone(), attr_value(&mut rng, spec));
        }
    }
    // Log-normal: most prices near the median, a long tail above.
    let price = (3_900.0 * (0.9 * rng.normal()).exp()).round().clamp(99.0, 5_000_000.0) as i64;
    let stock = if rng.below(10) == 0 { 0 } else { 1 + rng.below(500) as i64 };
    Listing {
        seller: seller_id(s.min(sellers.max(1) - 1)),
        sku: format!("{leaf}-{:07}", i + 1),
        fields: ProductFields {
            description: format!("{title}, {} and made to last.", rng.pick(WORDS)),
            title,
            category: c.path.clone(),
            attributes,
            price_minor: price,
            currency: "EUR".parse::<Currency>().expect("EUR is ISO 4217"),
            stock,
            images: Vec::new(),
        },
    }
}

const ADJECTIVES: &[&str] =
    &["Classic", "Handmade", "Compact", "Premium", "Everyday", "Vintage", "Minimal", "Rugged", "Modern"];
const BRANDS: &[&str] = &["Nordlys", "Atelier", "Kobo", "Larkspur", "Fjell", "Ostra", "Marlowe"];
const WORDS: &[&str] = &["oak", "linen", "matte", "satin", "carbon", "walnut", "slate", "amber"];

fn attr_value(rng: &mut Rng, spec: &AttrSpec) -> AttrValue {
    match &spec.kind {
        AttrKind::Text { max_len } => {
            let word = if spec.key == "brand" { rng.pick(BRANDS) } else { rng.pick(WORDS) };
            AttrValue::Text(word.chars().take(*max_len).collect())
        }
        AttrKind::Enum { values } => AttrValue::Text(values[rng.below(values.len())].clone()),
        AttrKind::Integer { min, max } => {
            let span = max.saturating_sub(*min).clamp(0, 1_000_000) as usize;
            AttrValue::Int(min + rng.below(span + 1) as i64)
        }
        AttrKind::Number { min, max } => {
            AttrValue::Number((((min + rng.unit() * (max - min)) * 10.0).floor() / 10.0).clamp(*min, *max))
        }
        AttrKind::Bool => AttrValue::Bool(rng.below(2) == 1),
    }
}

/// SplitMix64: deterministic, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}
