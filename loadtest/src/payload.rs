//! The order every phase sends: one realistic `POST /v1/orders` body, and the
//! `PlaceOrder` command the ingress makes of it (what the raw baselines publish and
//! insert, so every phase moves the same bytes).

use bytes::Bytes;
use souk_pipelines::{
    Message, encode,
    orders::{OrderLine, PlaceOrder, PlaceOrderRequest},
};
use uuid::Uuid;

/// Tenant of every benchmark order.
pub const TENANT: &str = "bench";

/// Distinct buyers the orders are spread over, so the `(tenant, buyer_id, created_at)`
/// index sees many keys, as it would in production, instead of one hot leaf page.
pub const BUYERS: usize = 100;

/// The buyer of the `n`th request or row.
pub fn buyer(n: u64) -> String {
    format!("bench-buyer-{}", n % BUYERS as u64)
}

/// The order, in both forms.
#[derive(Debug, Clone)]
pub struct Sample {
    pub request: PlaceOrderRequest,
    /// The HTTP body.
    pub body: Bytes,
    pub total_minor: i64,
    /// A `PlaceOrder` command as the ingress publishes it.
    pub command: Bytes,
}

impl Sample {
    pub fn new() -> anyhow::Result<Sample> {
        let request = PlaceOrderRequest {
            currency: "EUR".parse()?,
            lines: vec![
                OrderLine { sku: "MUG-STONEWARE-330ML-BLUE".into(), quantity: 2, unit_price_minor: 1299 },
                OrderLine { sku: "TEA-EARLGREY-LOOSE-250G".into(), quantity: 1, unit_price_minor: 849 },
            ],
        };
        let total_minor = request
            .validate()
            .map_err(|e| anyhow::anyhow!("the sample order is invalid: {e:?}"))?
            .amount_minor;
        let body = Bytes::from(serde_json::to_vec(&request)?);
        let command =
            Bytes::from(encode(&Self::command_for(&request, total_minor, Uuid::now_v7(), &buyer(0))));
        Ok(Sample { request, body, total_minor, command })
    }

    /// The command for one order.
    pub fn command(&self, order_id: Uuid, buyer_id: &str) -> PlaceOrder {
        Self::command_for(&self.request, self.total_minor, order_id, buyer_id)
    }

    fn command_for(
        request: &PlaceOrderRequest,
        total_minor: i64,
        order_id: Uuid,
        buyer_id: &str,
    ) -> PlaceOrder {
        PlaceOrder {
            order_id,
            tenant: TENANT.into(),
            buyer_id: buyer_id.into(),
            currency: request.currency,
            lines: request.lines.iter().map(souk_pipelines::orders::PricedLine::client_priced).collect(),
            total_minor,
            payment_token: None,
            placed_at: chrono::Utc::now(),
        }
    }

    /// The `souk-schema` header value of the command.
    pub fn schema() -> String {
        PlaceOrder::schema_header()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_is_valid_and_about_300_bytes() {
        let s = Sample::new().expect("sample");
        assert!((250..=400).contains(&s.command.len()), "command is {} bytes", s.command.len());
        let parsed: PlaceOrderRequest = serde_json::from_slice(&s.body).expect("body parses");
        assert_eq!(parsed.validate().map(|m| m.amount_minor), Ok(s.total_minor));
    }
}
