//! Integration tests of the engine against a real nats-server (one per test).

mod apply;
mod breaker;
mod controls;
mod dead_letters;
mod failures;
mod publisher;
mod purge;
mod redrive;
mod relay;
mod runtime;
mod status;

use souk_topologies::{Topology, apply::Mode, publisher::Publisher};
use std::time::Duration;

/// A small topology with short timers so failure paths run in test time.
pub const TEST_TOPOLOGY: &str = r#"
[[stream]]
name = "CMD"
subjects = ["souk.cmd.>"]
retention = "work-queue"
allow-atomic = true

[[stream]]
name = "EVT"
subjects = ["souk.evt.>"]
retention = "limits"
allow-atomic = true

[[stream]]
name = "DLQ"
subjects = ["souk.dlq.>"]
retention = "limits"

[[consumer]]
name = "work"
stream = "CMD"
filter-subjects = ["souk.cmd.test.work"]
ack-wait = "1s"
max-deliver = 3
backoff = ["50ms", "50ms", "50ms"]
max-ack-pending = 1000

[[pool]]
name = "work"
consumer = "work"
handler = "test"
concurrency = 4
fetch-batch = 8
handler-timeout = "10s"
drain-timeout = "10s"
"#;

pub struct Env {
    pub nats: souk_testkit::NatsServer,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub publisher: Publisher,
    pub topology: Topology,
}

/// A nats-server with the test topology applied.
pub async fn env() -> anyhow::Result<Env> {
    env_with(TEST_TOPOLOGY).await
}

pub async fn env_with(topology: &str) -> anyhow::Result<Env> {
    env_of(Topology::parse(topology)?).await
}

/// A nats-server with `topology` applied (built or changed as typed values).
pub async fn env_of(topology: Topology) -> anyhow::Result<Env> {
    let nats = souk_testkit::NatsServer::start().await?;
    let client = nats.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    souk_topologies::apply::apply(&js, &topology, Mode::Apply).await?;
    let publisher = Publisher::new(client.clone(), Duration::from_secs(2));
    Ok(Env { nats, client, js, publisher, topology })
}

/// `text` with `from` replaced by `to`, for tests of what the topology loader refuses
/// (typed values cannot express an invalid file): fails unless `from` is there, so an
/// edit that no longer matches cannot leave the text valid and the test vacuous.
pub fn edited(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the text to edit has no {from:?}");
    text.replace(from, to)
}

pub fn msg(subject: &str, id: &str, body: &str) -> souk_topologies::publisher::OutgoingMessage {
    souk_topologies::publisher::OutgoingMessage {
        subject: subject.into(),
        msg_id: id.into(),
        headers: async_nats::HeaderMap::new(),
        payload: bytes::Bytes::from(body.to_owned()),
    }
}

pub async fn stream_messages(js: &async_nats::jetstream::Context, stream: &str) -> anyhow::Result<u64> {
    Ok(js.get_stream(stream).await?.info().await?.state.messages)
}

/// `souk dev`'s nats-server does not share souk's process group, so the Ctrl-C a
/// terminal sends to the foreground group reaches souk (which drains, then stops the
/// server) and not the server itself.
#[tokio::test]
async fn the_local_nats_server_runs_in_its_own_process_group() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bin = souk_testkit::nats_server_bin()?;
    let (child, _port) = souk_topologies::local_server::spawn(&bin, dir.path(), None).await?;
    let pgrp = |stat: String| -> anyhow::Result<String> {
        // `pid (name) state ppid pgrp ...`
        let rest = stat.rsplit_once(')').map(|(_, r)| r.to_owned()).unwrap_or_default();
        rest.split_whitespace().nth(2).map(str::to_owned).ok_or_else(|| anyhow::anyhow!("no pgrp in {stat}"))
    };
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let server = pgrp(std::fs::read_to_string(format!("/proc/{pid}/stat"))?)?;
    let ours = pgrp(std::fs::read_to_string("/proc/self/stat")?)?;
    assert_eq!(server, pid.to_string(), "it leads a group of its own");
    assert_ne!(server, ours);
    souk_topologies::local_server::stop(child).await;
    Ok(())
}
