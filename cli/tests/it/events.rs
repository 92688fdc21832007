//! The EVT stream as tests read it: an order's saga publishes several events (accepted,
//! inventory, payments, confirmed or cancelled…), so tests count them by subject and
//! order rather than assuming the stream holds only `OrderAccepted`.

use souk_testkit::Stack;

/// One event on EVT.
#[derive(Debug, Clone)]
pub struct Event {
    pub subject: String,
    pub schema: Option<String>,
    pub body: serde_json::Value,
}

/// Every event on EVT, in stream order.
pub async fn all(stack: &Stack) -> anyhow::Result<Vec<Event>> {
    let stream = stack.js.get_stream("EVT").await?;
    let last = stream.get_info().await?.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await?;
        let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
        out.push(Event {
            subject: m.subject.to_string(),
            schema: header("souk-schema"),
            body: serde_json::from_slice(&m.payload)?,
        });
    }
    Ok(out)
}

/// The events on `subject` about `order_id`.
pub async fn of_order(stack: &Stack, subject: &str, order_id: &str) -> anyhow::Result<Vec<Event>> {
    Ok(all(stack)
        .await?
        .into_iter()
        .filter(|e| e.subject == subject && e.body["order_id"] == order_id)
        .collect())
}

/// How many events on EVT are on `subject`.
pub async fn count(stack: &Stack, subject: &str) -> anyhow::Result<usize> {
    Ok(all(stack).await?.iter().filter(|e| e.subject == subject).count())
}
