//! Generated listings for demos and the benchmark (`souk seed catalog`, loadtest):
//! realistic and varied — titles from word lists per category, typed attributes the
//! category schema accepts, prices with a long tail (log-normal), some stock at zero —
//! and the same for the same seed, so runs can be compared.
//!
//! Products are published as `WriteProduct` commands like API writes, in atomic batches
//! whose PubAcks are awaited. Each write id is a v5 UUID of (seed, seller, sku), so
//! seeding twice with one seed writes nothing new.

use chrono::{DateTime, TimeZone, Utc};
use futures::{StreamExt, stream};
use souk_pipelines::{
    Currency,
    catalog::{AttrValue, ProductChange, ProductFields, WriteProduct},
    categories::{self, AttrKind, AttrSpec, Category},
};
use souk_topologies::publisher::{MAX_ATOMIC_BATCH, Publisher};
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::commands::{uuid_v5, write_message};

/// A small, fast, deterministic generator (SplitMix64): good enough to vary listings,
/// and no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

const ADJECTIVES: &[&str] = &[
    "Classic",
    "Handmade",
    "Compact",
    "Premium",
    "Everyday",
    "Vintage",
    "Minimal",
    "Rugged",
    "Lightweight",
    "Organic",
    "Deluxe",
    "Modern",
    "Rustic",
    "Essential",
    "Signature",
    "Studio",
    "Travel",
    "Heritage",
];
const BRANDS: &[&str] =
    &["Nordlys", "Atelier Sud", "Kobo", "Umami Works", "Larkspur", "Fjell", "Ostra", "Marlowe"];
const WORDS: &[&str] =
    &["oak", "linen", "matte", "satin", "carbon", "walnut", "slate", "amber", "coral", "pine"];

/// Nouns for titles by leaf category name; others use the name itself.
const NOUNS: &[(&str, &[&str])] = &[
    ("mugs", &["Mug", "Cup", "Tumbler", "Espresso Cup", "Travel Mug"]),
    ("cookware", &["Frying Pan", "Saucepan", "Dutch Oven", "Wok", "Skillet"]),
    ("knives", &["Chef Knife", "Paring Knife", "Bread Knife", "Santoku"]),
    ("chairs", &["Dining Chair", "Armchair", "Bar Stool", "Rocking Chair"]),
    ("lamps", &["Table Lamp", "Floor Lamp", "Pendant Light", "Desk Lamp"]),
    ("headphones", &["Headphones", "Earbuds", "Headset"]),
    ("speakers", &["Speaker", "Soundbar", "Bookshelf Speakers"]),
    ("phones", &["Smartphone", "Phone"]),
    ("laptops", &["Laptop", "Notebook", "Ultrabook"]),
    ("cameras", &["Camera", "Mirrorless Camera", "Action Cam"]),
    ("sneakers", &["Sneakers", "Trainers", "High Tops"]),
    ("boots", &["Boots", "Chelsea Boots", "Hiking Boots"]),
    ("t-shirts", &["T-Shirt", "Tee", "Long Sleeve Tee"]),
    ("jackets", &["Jacket", "Parka", "Rain Jacket", "Bomber"]),
    ("watches", &["Watch", "Chronograph", "Diver Watch"]),
    ("fiction", &["Novel", "Mystery", "Saga", "Short Stories"]),
    ("non-fiction", &["Biography", "History", "Field Guide", "Essays"]),
    ("children", &["Picture Book", "Bedtime Stories", "Activity Book"]),
    ("bikes", &["Road Bike", "Gravel Bike", "City Bike", "Mountain Bike"]),
    ("running", &["Running Vest", "Running Belt", "Shorts"]),
    ("weights", &["Dumbbell", "Kettlebell", "Weight Plate"]),
    ("building", &["Building Set", "Brick Kit", "Construction Set"]),
    ("board-games", &["Board Game", "Strategy Game", "Party Game"]),
    ("skincare", &["Face Cream", "Serum", "Cleanser", "Moisturiser"]),
    ("coffee", &["Coffee Beans", "Espresso Roast", "Filter Coffee"]),
];

/// Median price (minor units) by top-level category.
fn median_price(path: &str) -> f64 {
    match path.split('/').next().unwrap_or("") {
        "electronics" => 24_900.0,
        "sports" => 9_900.0,
        "fashion" => 6_900.0,
        "home" => 3_900.0,
        "beauty" | "books" | "toys" => 1_900.0,
        _ => 1_500.0,
    }
}

fn nouns(path: &str) -> Vec<String> {
    let leaf = path.rsplit('/').next().unwrap_or(path);
    match NOUNS.iter().find(|(name, _)| *name == leaf) {
        Some((_, nouns)) => nouns.iter().map(|n| (*n).to_owned()).collect(),
        None => vec![leaf.replace('-', " ")],
    }
}

/// A value of the type and within the bounds `spec` gives.
fn attr_value(rng: &mut Rng, spec: &AttrSpec) -> AttrValue {
    match &spec.kind {
        AttrKind::Text { max_len } => {
            let word = if spec.key == "brand" { *rng.pick(BRANDS) } else { *rng.pick(WORDS) };
            AttrValue::Text(word.chars().take(*max_len).collect())
        }
        AttrKind::Enum { values } => AttrValue::Text(rng.pick(values).clone()),
        AttrKind::Integer { min, max } => {
            let span = (max.saturating_sub(*min)).clamp(0, 1_000_000) as usize;
            AttrValue::Int(min + rng.below(span + 1) as i64)
        }
        AttrKind::Number { min, max } => {
            let v = ((min + rng.unit() * (max - min)) * 10.0).floor() / 10.0;
            AttrValue::Number(v.clamp(*min, *max))
        }
        AttrKind::Bool => AttrValue::Bool(rng.below(2) == 1),
    }
}

/// One generated listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    pub seller: String,
    pub sku: String,
    pub fields: ProductFields,
}

/// The seller ids `seed catalog --sellers n` writes for.
pub fn seller_id(i: usize) -> String {
    format!("seller-{:04}", i + 1)
}

/// Listing number `i` of the set made by `seed` for `sellers` sellers. Each listing
/// depends only on (seed, i), so any slice of a set can be made on its own.
pub fn listing(seed: u64, sellers: usize, i: usize) -> Listing {
    let mut rng = Rng::new(seed.wrapping_mul(0x100_0000_01B3).wrapping_add(i as u64));
    // A few sellers list much more than most (a long tail, like real marketplaces).
    let s = ((rng.unit().powi(2)) * sellers.max(1) as f64) as usize;
    let leaves: Vec<&Category> = categories::schema().leaves().collect();
    let c = *rng.pick(&leaves);
    let title = format!("{} {} {}", rng.pick(BRANDS), rng.pick(ADJECTIVES), rng.pick(&nouns(&c.path)));
    let mut attributes = BTreeMap::new();
    for spec in &c.attributes {
        // Every required attribute, most optional ones.
        if spec.required || rng.below(10) < 7 {
            attributes.insert(spec.key.clone(), attr_value(&mut rng, spec));
        }
    }
    // Log-normal around the category's median: most near it, a few far above.
    let price = (median_price(&c.path) * (0.8 * rng.normal()).exp()).round().clamp(99.0, 5_000_000.0);
    let stock = match rng.below(10) {
        0 => 0,
        1 => 1 + rng.below(3) as i64,
        _ => 5 + rng.below(500) as i64,
    };
    let description = format!(
        "{title}. {} and made to last; ships in {} days.",
        ["Carefully made", "A customer favourite", "New this season", "Designed in-house"][rng.below(4)],
        1 + rng.below(5)
    );
    let sku = format!("{}-{:07}", c.path.rsplit('/').next().unwrap_or("item"), i + 1);
    let images = (0..rng.below(3)).map(|n| format!("https://img.souk.example/{sku}/{n}.jpg")).collect();
    Listing {
        seller: seller_id(s.min(sellers.max(1) - 1)),
        sku,
        fields: ProductFields {
            title,
            description,
            category: c.path.clone(),
            attributes,
            price_minor: price as i64,
            currency: "EUR".parse::<Currency>().unwrap_or_else(|_| unreachable!("EUR is ISO 4217")),
            stock,
            images,
        },
    }
}

/// The write command for a generated listing: a fixed write id and time per (seed,
/// listing), so seeding again changes nothing.
pub fn command(seed: u64, tenant: &str, listing: &Listing) -> WriteProduct {
    let namespace = uuid_v5(Uuid::nil(), format!("souk-seed:{seed}").as_bytes());
    WriteProduct {
        write_id: uuid_v5(namespace, format!("{tenant}/{}/{}", listing.seller, listing.sku).as_bytes()),
        tenant: tenant.to_owned(),
        seller: listing.seller.clone(),
        sku: listing.sku.clone(),
        expected_version: None,
        change: ProductChange::Put { fields: listing.fields.clone() },
        actor: "souk-seed".into(),
        requested_at: seeded_at(),
        stock_basis: None,
    }
}

fn seeded_at() -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600, 0).single().unwrap_or_default() // 2026-01-01
}

/// What to seed.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    pub tenant: String,
    pub products: usize,
    pub sellers: usize,
    pub seed: u64,
    /// Atomic batches in flight at once.
    pub in_flight: usize,
}

/// Publish the set `options` describes; `progress` is called with the number of
/// products stored so far. Returns the number stored (JetStream acknowledged).
pub async fn publish(
    publisher: &Publisher,
    options: &SeedOptions,
    progress: impl Fn(usize),
) -> Result<usize, souk_topologies::Error> {
    let batch = MAX_ATOMIC_BATCH.min(500);
    let starts: Vec<usize> = (0..options.products).step_by(batch).collect();
    let mut stored = 0usize;
    let mut batches = stream::iter(starts)
        .map(|start| async move {
            let end = (start + batch).min(options.products);
            let messages: Vec<_> = (start..end)
                .map(|i| {
                    write_message(&command(
                        options.seed,
                        &options.tenant,
                        &listing(options.seed, options.sellers, i),
                    ))
                })
                .collect();
            // A failed batch is retried (its stored messages are deduplicated).
            let mut tries = 0;
            loop {
                let results = publisher.publish_all(&messages).await;
                match results.into_iter().find_map(Result::err) {
                    None => return Ok(messages.len()),
                    Some(e) if tries >= 5 || e.is_permanent() => return Err(e),
                    Some(e) => {
                        tries += 1;
                        tracing::warn!(error = %e, tries, "seed batch not stored; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(200 << tries)).await;
                    }
                }
            }
        })
        .buffer_unordered(options.in_flight.max(1));
    while let Some(n) = batches.next().await {
        stored += n?;
        progress(stored);
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_listings_and_another_seed_others() {
        let a: Vec<_> = (0..50).map(|i| listing(7, 10, i)).collect();
        let b: Vec<_> = (0..50).map(|i| listing(7, 10, i)).collect();
        let c: Vec<_> = (0..50).map(|i| listing(8, 10, i)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn listings_are_valid_and_varied() {
        let all: Vec<_> = (0..2000).map(|i| listing(1, 20, i)).collect();
        for l in &all {
            crate::validate::row(&l.sku, &l.fields).expect("valid listing");
        }
        let zero_stock = all.iter().filter(|l| l.fields.stock == 0).count();
        assert!(zero_stock > 100 && zero_stock < 400, "{zero_stock} of 2000 out of stock");
        let mut prices: Vec<i64> = all.iter().map(|l| l.fields.price_minor).collect();
        prices.sort_unstable();
        let (median, p99) = (prices[1000], prices[1980]);
        assert!(p99 > 4 * median, "long tail: p99 {p99} vs median {median}");
        let sellers: std::collections::HashSet<_> = all.iter().map(|l| &l.seller).collect();
        assert!(sellers.len() > 10);
    }
}
