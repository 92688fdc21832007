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

/// How an attribute's values are made.
#[derive(Debug, Clone, Copy)]
pub enum AttrGen {
    Text(&'static [&'static str]),
    Int(i64, i64),
    Number(f64, f64),
    Bool,
}

/// A category the generator writes into: its path, words for titles, attributes.
#[derive(Debug, Clone, Copy)]
pub struct CategoryGen {
    pub path: &'static str,
    /// Median price in minor units.
    pub median_price: f64,
    pub nouns: &'static [&'static str],
    pub adjectives: &'static [&'static str],
    pub attributes: &'static [(&'static str, AttrGen)],
}

const COLORS: &[&str] =
    &["black", "white", "red", "blue", "green", "grey", "yellow", "navy", "beige", "pink"];
const MATERIALS: &[&str] =
    &["ceramic", "stoneware", "porcelain", "glass", "steel", "bamboo", "cotton", "oak"];
const BRANDS: &[&str] =
    &["Nordlys", "Atelier Sud", "Kobo", "Umami Works", "Larkspur", "Fjell", "Ostra", "Marlowe"];

/// The categories seeded, with words and attributes per category.
pub const CATEGORIES: &[CategoryGen] = &[
    CategoryGen {
        path: "home/kitchen/mugs",
        median_price: 1400.0,
        nouns: &["Mug", "Cup", "Tumbler", "Espresso Cup", "Travel Mug"],
        adjectives: &["Speckled", "Glazed", "Handmade", "Classic", "Stackable", "Matte", "Rustic"],
        attributes: &[
            ("color", AttrGen::Text(COLORS)),
            ("material", AttrGen::Text(MATERIALS)),
            ("capacity_ml", AttrGen::Int(80, 600)),
            ("dishwasher_safe", AttrGen::Bool),
        ],
    },
    CategoryGen {
        path: "home/kitchen/knives",
        median_price: 4900.0,
        nouns: &["Chef Knife", "Paring Knife", "Bread Knife", "Santoku", "Knife Set"],
        adjectives: &["Forged", "Damascus", "Japanese", "Professional", "Ergonomic"],
        attributes: &[
            ("blade_length_cm", AttrGen::Number(7.0, 30.0)),
            ("material", AttrGen::Text(MATERIALS)),
        ],
    },
    CategoryGen {
        path: "home/decor/lamps",
        median_price: 6900.0,
        nouns: &["Table Lamp", "Floor Lamp", "Pendant Light", "Desk Lamp"],
        adjectives: &["Scandinavian", "Industrial", "Dimmable", "Vintage", "Minimal"],
        attributes: &[("color", AttrGen::Text(COLORS)), ("wattage", AttrGen::Int(3, 100))],
    },
    CategoryGen {
        path: "fashion/shoes/sneakers",
        median_price: 8900.0,
        nouns: &["Sneakers", "Running Shoes", "High Tops", "Trainers", "Slip-ons"],
        adjectives: &["Lightweight", "Breathable", "Retro", "Waterproof", "Everyday"],
        attributes: &[
            ("color", AttrGen::Text(COLORS)),
            ("size_eu", AttrGen::Int(35, 48)),
            ("brand", AttrGen::Text(BRANDS)),
        ],
    },
    CategoryGen {
        path: "fashion/clothing/shirts",
        median_price: 3500.0,
        nouns: &["Shirt", "Oxford Shirt", "Linen Shirt", "Polo", "T-Shirt"],
        adjectives: &["Slim Fit", "Organic", "Relaxed", "Striped", "Brushed"],
        attributes: &[
            ("color", AttrGen::Text(COLORS)),
            ("size", AttrGen::Text(&["XS", "S", "M", "L", "XL", "XXL"])),
            ("material", AttrGen::Text(MATERIALS)),
        ],
    },
    CategoryGen {
        path: "electronics/audio/headphones",
        median_price: 12900.0,
        nouns: &["Headphones", "Earbuds", "Headset", "Studio Monitors"],
        adjectives: &["Wireless", "Noise Cancelling", "Over-Ear", "Bluetooth", "Compact"],
        attributes: &[
            ("brand", AttrGen::Text(BRANDS)),
            ("wireless", AttrGen::Bool),
            ("battery_hours", AttrGen::Int(4, 60)),
        ],
    },
    CategoryGen {
        path: "books/fiction",
        median_price: 1600.0,
        nouns: &["Novel", "Short Stories", "Collected Poems", "Saga", "Mystery"],
        adjectives: &["Illustrated", "Hardcover", "Paperback", "Annotated", "First Edition"],
        attributes: &[
            ("pages", AttrGen::Int(90, 1200)),
            ("language", AttrGen::Text(&["en", "de", "fr", "es", "nl"])),
        ],
    },
];

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
    let c = rng.pick(CATEGORIES);
    let title = format!("{} {} {}", rng.pick(BRANDS), rng.pick(c.adjectives), rng.pick(c.nouns));
    let mut attributes = BTreeMap::new();
    for (key, generator) in c.attributes {
        let value = match *generator {
            AttrGen::Text(words) => AttrValue::Text((*rng.pick(words)).to_owned()),
            AttrGen::Int(lo, hi) => AttrValue::Int(lo + rng.below((hi - lo + 1) as usize) as i64),
            AttrGen::Number(lo, hi) => {
                AttrValue::Number(((lo + rng.unit() * (hi - lo)) * 10.0).round() / 10.0)
            }
            AttrGen::Bool => AttrValue::Bool(rng.below(2) == 1),
        };
        attributes.insert((*key).to_owned(), value);
    }
    // Log-normal around the category's median: most near it, a few far above.
    let price = (c.median_price * (0.8 * rng.normal()).exp()).round().clamp(99.0, 5_000_000.0);
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
            category: c.path.to_owned(),
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
