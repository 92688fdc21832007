//! Ingress idempotency keys: the first request with a key wins, and fixes the order id
//! and the request hash every later request with that key is compared against.

use sqlx::PgPool;
use std::collections::HashSet;
use uuid::Uuid;

use super::Error;

/// Prefix of the keys of catalog write claims (`catalog.write <key>`). Clients' keys are
/// visible ASCII without spaces, so a catalog write key never equals an order key of
/// the same principal, and housekeeping tells the two apart (an expired order claim
/// without its order marks the order lost; a catalog claim has no order).
pub const CATALOG_WRITE_PREFIX: &str = "catalog.write ";
/// Prefix of the keys of a seller's ship claims (`fulfilment.ship <key>`), apart from
/// order and catalog keys the same way.
pub const FULFILMENT_SHIP_PREFIX: &str = "fulfilment.ship ";

/// A key to claim (a request that wants to be first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub tenant: String,
    pub principal: String,
    pub key: String,
    /// Hash of the canonical request body.
    pub request_hash: Vec<u8>,
    /// The order id this request will get if it is first.
    pub order_id: Uuid,
}

/// The stored record of a key, and whether this call created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub request_hash: Vec<u8>,
    pub order_id: Uuid,
    /// True when this call inserted the record (the request is new).
    pub fresh: bool,
}

/// Claim many keys in one round trip (the ingress batches concurrent requests).
/// Returns one record per claim, in order. Claims repeating a key share one record.
pub async fn claim(pool: &PgPool, claims: &[Claim]) -> Result<Vec<Record>, Error> {
    // Only the first claim of a repeated key is offered to the database, so which one
    // wins never depends on the order Postgres processes rows in.
    let mut offered = HashSet::new();
    let firsts: Vec<&Claim> =
        claims.iter().filter(|c| offered.insert((&c.tenant, &c.principal, &c.key))).collect();
    let col = |f: fn(&Claim) -> String| firsts.iter().map(|c| f(c)).collect::<Vec<_>>();
    let (tenants, principals, keys) =
        (col(|c| c.tenant.clone()), col(|c| c.principal.clone()), col(|c| c.key.clone()));
    let hashes: Vec<Vec<u8>> = firsts.iter().map(|c| c.request_hash.clone()).collect();
    let order_ids: Vec<Uuid> = firsts.iter().map(|c| c.order_id).collect();

    let inserted: Vec<(String, String, String)> = sqlx::query_as(
        "insert into idempotency_keys (tenant, principal, key, request_hash, order_id)
         select * from unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::uuid[])
         on conflict do nothing
         returning tenant, principal, key",
    )
    .bind(&tenants)
    .bind(&principals)
    .bind(&keys)
    .bind(&hashes)
    .bind(&order_ids)
    .fetch_all(pool)
    .await?;
    let fresh: HashSet<(String, String, String)> = inserted.into_iter().collect();
    if fresh.len() == firsts.len() {
        // The common case: every key is new, so every claim's record is its own (the
        // first of a repeated key wins). No second round trip.
        let mut first = std::collections::HashMap::new();
        return Ok(claims
            .iter()
            .map(|c| {
                let winner = *first.entry((&c.tenant, &c.principal, &c.key)).or_insert(c);
                Record {
                    request_hash: winner.request_hash.clone(),
                    order_id: winner.order_id,
                    fresh: std::ptr::eq(winner, c),
                }
            })
            .collect());
    }

    let stored: Vec<(String, String, String, Vec<u8>, Uuid)> = sqlx::query_as(
        "select k.tenant, k.principal, k.key, k.request_hash, k.order_id
         from idempotency_keys k
         join unnest($1::text[], $2::text[], $3::text[]) as c(tenant, principal, key)
           using (tenant, principal, key)",
    )
    .bind(&tenants)
    .bind(&principals)
    .bind(&keys)
    .fetch_all(pool)
    .await?;
    let stored: std::collections::HashMap<_, _> =
        stored.into_iter().map(|(t, p, k, h, o)| ((t, p, k), (h, o))).collect();

    // Within one call, only the first claim of a repeated key may be "fresh".
    let mut seen = HashSet::new();
    claims
        .iter()
        .map(|c| {
            let id = (c.tenant.clone(), c.principal.clone(), c.key.clone());
            let (request_hash, order_id) = stored
                .get(&id)
                .cloned()
                .ok_or_else(|| Error::Corrupt(format!("idempotency key {} vanished", c.key)))?;
            let fresh = fresh.contains(&id) && seen.insert(id);
            Ok(Record { request_hash, order_id, fresh })
        })
        .collect()
}

/// [`claim`], but a batch Postgres refuses as a whole (a value it cannot store in one
/// claim fails the one statement for all) is retried claim by claim, so only the
/// claims that fail on their own get an error: one poison request cannot fail the
/// innocent ones batched with it. A failure that is not the batch's fault (Postgres
/// unreachable, read-only, overloaded: [`Error::is_retryable`]) is returned as is —
/// singles would fail alike, one round trip each.
pub async fn claim_isolating(pool: &PgPool, claims: &[Claim]) -> Result<Vec<Result<Record, Error>>, Error> {
    let batch_error = match claim(pool, claims).await {
        Ok(records) => return Ok(records.into_iter().map(Ok).collect()),
        Err(e) if claims.len() < 2 || e.is_retryable() => return Err(e),
        Err(e) => e,
    };
    tracing::debug!(claims = claims.len(), error = %batch_error, "claim batch refused; claiming one by one");
    // Concurrently: repeated keys stay correct (the first insert wins, the others read
    // its record), as with concurrent batches.
    let singles = claims.iter().map(|c| async move {
        let mut records = claim(pool, std::slice::from_ref(c)).await?;
        records.pop().ok_or_else(|| Error::Corrupt("a claim returned no record".into()))
    });
    Ok(futures::future::join_all(singles).await)
}

/// Who placed `order_id` (tenant, principal), if an ingress accepted it — the order
/// itself may not be written yet. Only order claims: a prefixed claim (`<kind> <key>`:
/// a catalog write, a ship) keeps another kind of id in `order_id`.
pub async fn owner_of(pool: &PgPool, order_id: Uuid) -> Result<Option<(String, String)>, Error> {
    Ok(sqlx::query_as(
        "select tenant, principal from idempotency_keys where order_id = $1 and key not like '% %'",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?)
}

/// The record of `key`, if it was claimed (and has not expired): read-only, for a
/// request that wants to know whether it repeats an accepted one before claiming.
pub async fn existing(
    pool: &PgPool,
    tenant: &str,
    principal: &str,
    key: &str,
) -> Result<Option<Record>, Error> {
    let row: Option<(Vec<u8>, Uuid)> = sqlx::query_as(
        "select request_hash, order_id from idempotency_keys where tenant = $1 and principal = $2 and key = $3",
    )
    .bind(tenant)
    .bind(principal)
    .bind(key)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(request_hash, order_id)| Record { request_hash, order_id, fresh: false }))
}
