//! The products a catalog run writes: `souk seed catalog`'s listings (realistic, varied,
//! the same for the same seed), and the search documents they become.

use chrono::{DateTime, Utc};
use souk_stores::search::SearchDoc;

pub use souk_jobs::seed::{Listing, Rng, listing};

/// The document the index holds for `listing` at `version`.
pub fn doc(listing: &Listing, tenant: &str, version: i64, updated_at: DateTime<Utc>) -> SearchDoc {
    let f = &listing.fields;
    SearchDoc {
        tenant: tenant.to_owned(),
        sku: listing.sku.clone(),
        seller: listing.seller.clone(),
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
