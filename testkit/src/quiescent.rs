//! Waiting for a system with nothing left to do, before asserting exact counts.
//!
//! A count that has reached its expected value at one moment says nothing of what is
//! still in flight: a redelivery, a relay round that publishes a row twice, a dead
//! letter on a last attempt. Crash tests assert exact counts only once the pipeline is
//! quiescent: every consumer of every pipeline stream has delivered everything stored for it and
//! has nothing awaiting an ack, the outbox has no unpublished row, and all of that read
//! the same twice in a row (nats-server stores a message before it tells the consumers,
//! so one read could miss a message just stored — and each read also asks the stream
//! whether anything is stored past each consumer's ack floor, which cannot miss it).

use async_nats::jetstream;
use futures::TryStreamExt;
use sqlx::PgPool;
use std::{fmt, time::Duration};

/// What one read of the pipeline saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    streams: Vec<StreamState>,
    /// Outbox rows not yet published (when an outbox is watched).
    unpublished: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamState {
    name: String,
    last_sequence: u64,
    consumers: Vec<ConsumerState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ConsumerState {
    name: String,
    delivered: u64,
    ack_floor: u64,
    /// Stored for it, not yet delivered.
    pending: u64,
    /// Delivered, not yet acknowledged (running, or waiting for a retry).
    ack_pending: usize,
    /// A message for it is stored past its ack floor (see [`crate::drained`]).
    stored_past_ack_floor: bool,
}

impl Snapshot {
    fn idle(&self) -> bool {
        self.unpublished.is_none_or(|n| n == 0)
            && self
                .streams
                .iter()
                .flat_map(|s| &s.consumers)
                .all(|c| c.pending == 0 && c.ack_pending == 0 && !c.stored_past_ack_floor)
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.streams {
            write!(f, "{} (last {}):", s.name, s.last_sequence)?;
            for c in &s.consumers {
                write!(f, " {} pending {} ack-pending {}", c.name, c.pending, c.ack_pending)?;
                if c.stored_past_ack_floor {
                    write!(f, " (stored past its ack floor)")?;
                }
                write!(f, ";")?;
            }
            write!(f, " ")?;
        }
        match self.unpublished {
            Some(n) => write!(f, "outbox unpublished {n}"),
            None => Ok(()),
        }
    }
}

async fn read(js: &jetstream::Context, outbox: Option<&PgPool>) -> anyhow::Result<Snapshot> {
    let mut names: Vec<String> = js.stream_names().try_collect().await?;
    // souk's own bookkeeping (key-value buckets: heartbeats, the deployment id; the
    // status history) changes with time, not with work: it is never quiescent.
    names.retain(|n| !n.starts_with("KV_") && n != souk_topologies::status::history::STREAM);
    names.sort();
    let mut streams = Vec::new();
    for name in names {
        let stream = js.get_stream(&name).await?;
        let last_sequence = stream.cached_info().state.last_sequence;
        let infos: Vec<jetstream::consumer::Info> = stream.consumers().try_collect().await?;
        let mut consumers = Vec::with_capacity(infos.len());
        for c in infos {
            let stored_past_ack_floor = crate::drained::stored_past_ack_floor(&stream, &c).await?;
            consumers.push(ConsumerState {
                name: c.name,
                delivered: c.delivered.stream_sequence,
                ack_floor: c.ack_floor.stream_sequence,
                pending: c.num_pending,
                ack_pending: c.num_ack_pending,
                stored_past_ack_floor,
            });
        }
        consumers.sort_by(|a, b| a.name.cmp(&b.name));
        streams.push(StreamState { name, last_sequence, consumers });
    }
    let unpublished = match outbox {
        Some(pool) => Some(
            sqlx::query_scalar("select count(*) from outbox where published_at is null")
                .fetch_one(pool)
                .await?,
        ),
        None => None,
    };
    Ok(Snapshot { streams, unpublished })
}

/// Wait until nothing is left to do: every consumer on the server has nothing pending
/// and nothing unacknowledged and, with `outbox`, no outbox row is unpublished — the
/// same in two reads in a row. Fails after `timeout` with what was still pending (or
/// the last read's error). Callers make sure nothing new arrives meanwhile (their
/// clients have finished).
pub async fn quiescent(
    js: &jetstream::Context,
    outbox: Option<&PgPool>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut previous: Option<Snapshot> = None;
    loop {
        // A read is bounded too: with the server gone, a request would wait out its own timeout.
        let left =
            deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(100));
        let now = match tokio::time::timeout(left, read(js, outbox)).await {
            Ok(read) => read,
            Err(_) => Err(anyhow::anyhow!("a read took longer than {left:?}")),
        };
        match &now {
            Ok(snapshot) if snapshot.idle() && previous.as_ref() == Some(snapshot) => return Ok(()),
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(match now {
                Ok(snapshot) => anyhow::anyhow!("not quiescent within {timeout:?}: {snapshot}"),
                Err(e) => e.context(format!("not quiescent within {timeout:?}: the last read failed")),
            });
        }
        previous = now.ok();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
