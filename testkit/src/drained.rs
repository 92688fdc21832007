//! Whether a consumer has handled everything stored for it — read from the stream, not
//! from the consumer's pending count.
//!
//! nats-server answers a publish once the message is stored and tells the stream's
//! consumers afterwards, on another goroutine: a consumer info read right after a
//! publish acknowledgement can still say `num_pending: 0` for a message the consumer
//! has not seen yet. (CI caught a test that published, saw "nothing pending, nothing
//! unacknowledged" before the worker had the message, and asserted on a table the
//! worker had not written yet.) So "drained" here asks the stream: is any message the
//! consumer's filters match stored past its ack floor? The ack floor only moves when
//! the consumer acknowledges, so the answer cannot run ahead of the worker.

use async_nats::jetstream::{self, stream::RawMessageErrorKind};

/// `Some(())` once `consumer` on `stream` has acknowledged (or terminated) every
/// message stored for it so far and has none delivered awaiting an ack; `None` while
/// it has not; an error when the server cannot be read. Made for [`crate::eventually`].
pub async fn drained(js: &jetstream::Context, stream: &str, consumer: &str) -> anyhow::Result<Option<()>> {
    let handle = js.get_stream(stream).await?;
    let info = handle.consumer_info(consumer).await?;
    if info.num_pending > 0 || info.num_ack_pending > 0 {
        return Ok(None);
    }
    Ok((!stored_past_ack_floor(&handle, &info).await?).then_some(()))
}

/// Whether a message `info`'s filters match is stored past its ack floor: one the
/// consumer has not acknowledged yet, whatever its pending counts say.
pub(crate) async fn stored_past_ack_floor(
    handle: &jetstream::stream::Stream,
    info: &jetstream::consumer::Info,
) -> anyhow::Result<bool> {
    let filters = souk_topologies::status::filters_of(&info.config);
    let past_floor = info.ack_floor.stream_sequence + 1;
    for subject in filters {
        match handle.get_first_raw_message_by_subject(subject, past_floor).await {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {}
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "{}/{}: reading past the ack floor: {e}",
                    info.stream_name,
                    info.name
                ));
            }
        }
    }
    Ok(false)
}
