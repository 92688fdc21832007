//! `POST /v1/checkout`: the buyer's cart becomes an order, through the same intake as
//! `POST /v1/orders` (priced from the catalog, key claimed, command published, 202 on
//! its PubAck), and the cart is emptied once the command is stored — here, and again
//! by the orders pool with the order's row (the command carries the lines as read), so
//! a cart this process could not empty is emptied all the same.
//!
//! The key's claim hashes the cart's lines (sku, quantity, by SKU), the token and the
//! expected total, in the key space of orders. So:
//! - a retry with the same key and the same cart is the same order (re-published under
//!   the same message id, which JetStream deduplicates) and empties the cart: this is
//!   also how a cart left full by a crash between the PubAck and the emptying (or a 503
//!   from the emptying) is emptied;
//! - a retry after the cart was emptied finds the checkout's lines in `cart_checkouts`
//!   (written with the emptying, after the PubAck) and gets the same order;
//! - the same key with another cart, token or total is 422; an empty cart with a key
//!   never used is 422 `empty-cart`. Nothing is published on any 4xx;
//! - a cart is checked out under one key at a time (claimed first, migration 0028):
//!   another key's checkout meanwhile is 409 `checkout-in-progress` — two taps made two
//!   orders of one cart (found in review). A refusal, or an answer with the cart
//!   empty, gives the claim up; a 5xx once the command may be stored keeps it for
//!   [`CHECKOUT_HOLD`] (only its key's retry goes on).

use axum::{
    body::Bytes,
    extract::State,
    extract::rejection::BytesRejection,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde::{Deserialize, Serialize};
use souk_pipelines::{
    Currency,
    orders::{CheckedOutCart, check_checkout_fields},
};
use souk_stores::postgres::{
    carts::{self, CartItem, CheckoutClaim},
    idempotency,
};
use std::sync::Arc;
use utoipa::ToSchema;

use crate::{
    AppState, Claims, Problem,
    auth::{Principal, Role},
    catalog::unavailable,
    intake::{Accepted, IntakeError, NewOrder, request_hash},
    openapi::{self, IdempotencyKey},
    orders::{OrderAccepted, accepted_response, idempotency_key, intake_problem, stored_replay},
    pricing,
    request_body::{self, Shape},
};

/// The body of `POST /v1/checkout`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// The payment provider's token: `tok_` and 1-64 of A-Z a-z 0-9 _.
    #[schema(pattern = "^tok_[A-Za-z0-9_]{1,64}$", example = "tok_ok")]
    pub payment_token: String,
    /// The total the buyer saw (`GET /v1/cart`), in minor units of `expected_currency`
    /// (required with it): another total now is 409 with the current prices.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub expected_total_minor: Option<i64>,
    /// The cart's currency the buyer saw (`GET /v1/cart`): another currency now is 409
    /// with the current prices.
    #[serde(default)]
    pub expected_currency: Option<Currency>,
}

const CHECKOUT_SHAPE: Shape =
    Shape { fields: &["payment_token", "expected_total_minor", "expected_currency"], lists: &[] };

/// Check out the cart
///
/// Turns the buyer's cart into an order, priced from the catalog, and answers like
/// `POST /v1/orders`: 202 with the order id and its status URL once JetStream has
/// stored the command; the cart is emptied then. Lines that cannot be ordered are 422,
/// each named by its place in `GET /v1/cart` (`items[i].sku`); an empty cart is 422
/// `empty-cart`; another total or currency than `expected_total_minor` and
/// `expected_currency` is 409 with the current prices. Retry with the same
/// `Idempotency-Key`: the same cart is the same order (also
/// once the cart was emptied by it); another cart under the key is 422. While a
/// checkout of the cart under another key is under way, 409 `checkout-in-progress`.
#[utoipa::path(
    post,
    path = "/v1/checkout",
    operation_id = "checkout",
    tag = "cart",
    security(("bearer" = [])),
    params(IdempotencyKey),
    request_body(content = CheckoutRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: the order's command is stored and the cart emptied.",
            body = OrderAccepted, headers(("Location" = String, description = "the order's status URL"))),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 408, response = openapi::RequestTimeout),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 415, response = openapi::UnsupportedMediaType),
        (status = 422, response = openapi::Unprocessable),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn checkout(
    State(state): State<Arc<AppState>>,
    Principal(claims): Principal,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    if !claims.has(Role::Buyer) {
        return Err(Problem::forbidden("checking out needs the buyer role"));
    }
    state.check_write(&claims)?;
    let key = idempotency_key(&headers)?;
    let request: CheckoutRequest = request_body::read(&headers, body, &CHECKOUT_SHAPE)?;
    let mut errors = Vec::new();
    check_checkout_fields(
        &request.payment_token,
        request.expected_total_minor,
        request.expected_currency,
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(Problem::unprocessable("validation", "the checkout is invalid").errors(errors));
    }
    // One checkout of a cart at a time: claimed before the cart is read.
    let (claimed, until) =
        carts::begin_checkout(&state.pool, &claims.tenant, &claims.sub, key, CHECKOUT_HOLD)
            .await
            .map_err(|e| unavailable(&state, e))?;
    if claimed == CheckoutClaim::Busy {
        return Err(Problem::new(StatusCode::CONFLICT, "checkout-in-progress", "Checkout in progress")
            .detail(
                "this cart is being checked out under another Idempotency-Key: wait for that answer \
             (a retry of it goes on), or check the cart again in a few minutes",
            ));
    }
    let renewed = claimed == CheckoutClaim::Renewed;
    let (outcome, claim) = check_out_claimed(&state, &claims, key, renewed, request).await;
    if claim == Claim::Release
        && let Some(until) = until
        && let Err(e) = carts::end_checkout(&state.pool, &claims.tenant, &claims.sub, key, until).await
    {
        tracing::warn!(error = %e, "a checkout's claim of its cart was not given up (it expires)");
    }
    outcome
}

/// How long a checkout's claim of its cart holds when its order may be stored and its
/// cart was not emptied (a 5xx after the command was handed to JetStream, a process
/// that died): only a retry under its key — the same order — goes on meanwhile, and a
/// buyer switching keys is told a checkout is in progress. The orders pool empties the
/// cart (and ends the claim) when it stores the order, usually well within the hold;
/// only an orders pool down past it leaves the cart open to a second order.
const CHECKOUT_HOLD: std::time::Duration = std::time::Duration::from_secs(300);

/// What becomes of the cart's claim after a checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Ended with the cart's emptying (in its transaction).
    Ended,
    /// Nothing was placed, or the order is answered and its cart empty: given up now.
    Release,
    /// The order may be stored and the cart is not emptied: held for its hold.
    Keep,
}

/// The checkout, its cart claimed under `key` (`renewed`: the key held the claim
/// before this request), and what becomes of the claim.
async fn check_out_claimed(
    state: &Arc<AppState>,
    claims: &Claims,
    key: &str,
    renewed: bool,
    request: CheckoutRequest,
) -> (Result<Response, Problem>, Claim) {
    let state = state.as_ref();
    // What this request placed nothing with: a claim it made is given up; a renewed one
    // was kept by an earlier request under the key whose order may be stored with the
    // cart still full, and stays until the emptying or its hold's end (review: a refused
    // retry gave it up, and a checkout under a new key ordered the cart again).
    let nothing_placed = if renewed { Claim::Keep } else { Claim::Release };
    // A refusal (4xx) placed nothing; a 5xx may follow a stored command.
    let after_handoff = |problem: Problem| {
        let claim = if problem.status < 500 { nothing_placed } else { Claim::Keep };
        (Err(problem), claim)
    };
    // The cart, its products and their stock in one read.
    let (items, stored) = match carts::items_with_products(&state.pool, &claims.tenant, &claims.sub).await {
        Ok(read) => read,
        Err(e) => return (Err(unavailable(state, e)), nothing_placed),
    };
    let lines: Vec<(String, i64)> = items.iter().map(|i| (i.sku.clone(), i.quantity)).collect();
    if lines.is_empty() {
        let answer = emptied_by_this_key(state, claims, key, &request).await.map(accepted_response);
        return (answer, Claim::Release);
    }
    let hash = checkout_hash(&lines, &request);
    let requested: Vec<(&str, i64)> = lines.iter().map(|(sku, q)| (sku.as_str(), *q)).collect();
    let priced = pricing::price_from(&pricing::live(stored), "items", &requested).and_then(|priced| {
        pricing::check_expected(priced, request.expected_total_minor, request.expected_currency)
    });
    let accepted = match priced {
        Ok(priced) => {
            let cart =
                CheckedOutCart { key: key.to_owned(), lines: items.iter().map(CartItem::as_read).collect() };
            let order = NewOrder { priced, payment_token: request.payment_token, cart: Some(cart) };
            match state.intake.place(claims, key, hash, &order).await {
                Ok(accepted) => accepted,
                // The key not claimed, nothing was published (review: a claim that
                // failed kept the cart's hold, and the buyer was told "checkout in
                // progress" under any other key for five minutes).
                Err(e @ IntakeError::NotClaimed(_)) => {
                    return (Err(intake_problem(state, e)), nothing_placed);
                }
                Err(e) => return after_handoff(intake_problem(state, e)),
            }
        }
        // The same cart checked out before, when the catalog still allowed it, whose
        // emptying did not happen: the same order (and empty the cart now).
        // Refused by the catalog, this request publishes nothing, whatever the answer.
        Err(problem) => match stored_replay(state, claims, key, &hash, problem).await {
            Ok(accepted) => accepted,
            Err(problem) => return (Err(problem), nothing_placed),
        },
    };
    if let Err(e) =
        carts::checked_out(&state.pool, &claims.tenant, &claims.sub, key, accepted.order_id, &items).await
    {
        tracing::warn!(error = %e, order_id = %accepted.order_id, "order placed but its cart not emptied (503)");
        let problem = Problem::unavailable(
            "the order is placed but the cart could not be emptied; retry with the same \
             Idempotency-Key (the same order, and the cart emptied)",
        );
        return (Err(problem), Claim::Keep);
    }
    (Ok(accepted_response(accepted)), Claim::Ended)
}

/// The claim's hash of a checkout: its cart's lines, token and expected total, tagged
/// so no order body can hash the same.
fn checkout_hash(lines: &[(String, i64)], request: &CheckoutRequest) -> Vec<u8> {
    // Without an expected currency, the form of the releases before it: a retry across
    // the deploy must hash as its first attempt did (second review, twelfth session).
    let form = match request.expected_currency {
        None => {
            serde_json::to_vec(&("checkout", lines, &request.payment_token, request.expected_total_minor))
        }
        Some(currency) => serde_json::to_vec(&(
            "checkout",
            lines,
            &request.payment_token,
            request.expected_total_minor,
            currency,
        )),
    };
    request_hash(&form.unwrap_or_default())
}

/// An empty cart: the same order again when this key's checkout emptied it (with the
/// same token and total), 422 `idempotency-key-reused` when the key was used for
/// something else, 422 `empty-cart` when the key is new.
async fn emptied_by_this_key(
    state: &AppState,
    claims: &Claims,
    key: &str,
    request: &CheckoutRequest,
) -> Result<Accepted, Problem> {
    let record = idempotency::existing(&state.pool, &claims.tenant, &claims.sub, key)
        .await
        .map_err(|e| unavailable(state, e))?;
    let Some(record) = record else {
        return Err(Problem::unprocessable("empty-cart", "the cart is empty: put items in it first"));
    };
    let taken = carts::checkout_lines(&state.pool, &claims.tenant, &claims.sub, record.order_id)
        .await
        .map_err(|e| unavailable(state, e))?;
    match taken {
        Some(lines) if checkout_hash(&lines, request) == record.request_hash => {
            Ok(Accepted { order_id: record.order_id, replay: true })
        }
        _ => Err(intake_problem(state, IntakeError::KeyReused)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkout without `expected_currency` hashes as the releases before it did, so
    /// its retry across a deploy is the same request under its key, not 422 (second
    /// review, twelfth session).
    #[test]
    fn a_checkout_without_a_currency_hashes_as_before() {
        let lines = vec![("MUG".to_owned(), 2)];
        let request = |currency: Option<&str>| CheckoutRequest {
            payment_token: "tok_ok".into(),
            expected_total_minor: Some(2598),
            expected_currency: currency.map(|c| c.parse().expect("a currency")),
        };
        let before = ("checkout", &lines, "tok_ok", Some(2598_i64));
        let before = request_hash(&serde_json::to_vec(&before).expect("json"));
        assert_eq!(checkout_hash(&lines, &request(None)), before);
        assert_ne!(checkout_hash(&lines, &request(Some("EUR"))), before);
        assert_ne!(
            checkout_hash(&lines, &request(Some("EUR"))),
            checkout_hash(&lines, &request(Some("USD")))
        );
    }
}
