use souk_topologies::{
    Topology,
    apply::{Action, Mode, apply},
};

use crate::TEST_TOPOLOGY;

#[tokio::test]
async fn check_on_an_empty_server_reports_missing_and_changes_nothing() -> anyhow::Result<()> {
    let nats = souk_testkit::NatsServer::start().await?;
    let js = async_nats::jetstream::new(nats.client().await?);
    let topology = Topology::parse(TEST_TOPOLOGY)?;
    let report = apply(&js, &topology, Mode::Check).await?;
    assert!(report.changes.iter().all(|c| c.action == Action::Missing), "{report}");
    assert!(js.get_stream("CMD").await.is_err(), "check must not create");
    Ok(())
}

#[tokio::test]
async fn apply_is_idempotent() -> anyhow::Result<()> {
    let nats = souk_testkit::NatsServer::start().await?;
    let js = async_nats::jetstream::new(nats.client().await?);
    let topology = Topology::parse(TEST_TOPOLOGY)?;
    let first = apply(&js, &topology, Mode::Apply).await?;
    assert!(first.changes.iter().all(|c| c.action == Action::Created), "{first}");
    for _ in 0..2 {
        let again = apply(&js, &topology, Mode::Apply).await?;
        assert!(again.in_sync(), "second apply changed something:\n{again}");
    }
    Ok(())
}

#[tokio::test]
async fn drift_is_reported_then_repaired() -> anyhow::Result<()> {
    let nats = souk_testkit::NatsServer::start().await?;
    let js = async_nats::jetstream::new(nats.client().await?);
    let topology = Topology::parse(TEST_TOPOLOGY)?;
    apply(&js, &topology, Mode::Apply).await?;

    // Someone changes the live objects by hand.
    let mut stream_config = js.get_stream("EVT").await?.cached_info().config.clone();
    stream_config.max_age = std::time::Duration::from_secs(3600);
    js.update_stream(stream_config).await?;
    let stream = js.get_stream("CMD").await?;
    let mut consumer_config = souk_topologies::apply::consumer_config(&topology.consumers[0]);
    consumer_config.max_ack_pending = 7;
    stream.update_consumer(consumer_config).await?;

    let report = apply(&js, &topology, Mode::Check).await?;
    let drifted: Vec<_> = report
        .changes
        .iter()
        .filter_map(|c| match &c.action {
            Action::Drifted(d) => Some((c.name.as_str(), d.iter().map(|d| d.field).collect::<Vec<_>>())),
            _ => None,
        })
        .collect();
    assert_eq!(drifted, [("EVT", vec!["max-age"]), ("work", vec!["max-ack-pending"])], "{report}");
    // Check changed nothing: still drifted.
    assert!(!apply(&js, &topology, Mode::Check).await?.in_sync());

    let repaired = apply(&js, &topology, Mode::Apply).await?;
    assert!(!repaired.in_sync(), "apply reports what it repaired");
    assert!(apply(&js, &topology, Mode::Check).await?.in_sync());
    Ok(())
}

/// A field JetStream cannot change in place (here: a work-queue stream declared as a
/// limits one, as in a data dir from before CMD was purged in bulk) fails the apply
/// with the drift spelled out and a way forward; nothing is changed or lost.
#[tokio::test]
async fn a_change_jetstream_cannot_make_in_place_fails_clearly_and_changes_nothing() -> anyhow::Result<()> {
    let nats = souk_testkit::NatsServer::start().await?;
    let client = nats.client().await?;
    let js = async_nats::jetstream::new(client);
    apply(&js, &Topology::parse(TEST_TOPOLOGY)?, Mode::Apply).await?;
    js.publish("souk.cmd.test.work", "unhandled".into()).await?.await?;

    let limits = TEST_TOPOLOGY.replacen(r#"retention = "work-queue""#, r#"retention = "limits""#, 1);
    let err = apply(&js, &Topology::parse(&limits)?, Mode::Apply).await.expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("update stream CMD"), "{text}");
    assert!(text.contains("retention (live WorkQueue, declared Limits)"), "{text}");
    assert!(text.contains("nats stream rm CMD"), "{text}");
    // The way forward says what a missing stream costs meanwhile (review, twelfth
    // session: an operator taking minutes over it found orders parked and cancelled).
    assert!(text.contains("souk outbox requeue"), "{text}");
    let mut cmd = js.get_stream("CMD").await?;
    let info = cmd.info().await?;
    assert_eq!(info.config.retention, async_nats::jetstream::stream::RetentionPolicy::WorkQueue);
    assert_eq!(info.state.messages, 1, "the unhandled command is still there");
    Ok(())
}
