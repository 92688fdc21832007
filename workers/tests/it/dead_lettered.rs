//! Orders of dead-lettered commands read `failed`, whatever happened to the streams.

use souk_stores::postgres::orders;
use souk_testkit::eventually;
use souk_topologies::{apply::Mode, runtime::Runtime};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::{Env, command, env};

/// Both order pools (intake and its dead letters), with the real handlers.
async fn start_both(env: &Env) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
    let registry = souk_workers::registry(env.db.pool.clone());
    let only = ["orders".to_owned(), "orders-dead-lettered".to_owned()];
    let runtime = Runtime::build(&env.publisher, &env.topology, &registry, &only).await?;
    let cancel = CancellationToken::new();
    Ok((cancel.clone(), tokio::spawn(runtime.run(cancel))))
}

async fn status(env: &Env, order_id: uuid::Uuid) -> Option<String> {
    orders::get(&env.db.pool, order_id).await.ok().flatten().map(|o| o.status)
}

/// A poison command (its total does not match its lines), sent as the ingress does.
async fn send_poison(env: &Env) -> anyhow::Result<uuid::Uuid> {
    let mut cmd = command();
    cmd.total_minor = 1;
    env.send(&format!("orders.place:{}:{}", cmd.tenant, cmd.order_id), &cmd).await?;
    Ok(cmd.order_id)
}

/// An operator deletes `CMD` and applies the topology again (say, to change a setting
/// only a new stream takes): its sequences start at 1 again. A dead letter's id was
/// `dlq:<consumer>:<stream sequence>`, so the first command dead-lettered from the new
/// stream got the id of one dead-lettered from the old: DLQ's one-day dedupe window
/// dropped it (and the dead-lettered pool's inbox had its id already), and its order
/// stayed `pending` for ever.
#[tokio::test]
async fn a_command_dead_lettered_after_its_stream_was_recreated_still_fails_its_order() -> anyhow::Result<()> {
    let env = env().await?;
    let (stop, run) = start_both(&env).await?;
    let first = send_poison(&env).await?;
    eventually(Duration::from_secs(15), || async {
        (status(&env, first).await.as_deref() == Some("failed")).then_some(())
    })
    .await?;
    stop.cancel();
    run.await?;

    env.js.delete_stream("CMD").await.map_err(|e| anyhow::anyhow!("{e}"))?;
    souk_topologies::apply::apply(&env.js, &env.topology, Mode::Apply).await?;

    let (stop, run) = start_both(&env).await?;
    let second = send_poison(&env).await?;
    let read = eventually(Duration::from_secs(15), || async {
        (env.dead_letters().await == 2 && status(&env, second).await.as_deref() == Some("failed"))
            .then_some(())
    })
    .await;
    stop.cancel();
    run.await?;
    assert!(
        read.is_ok(),
        "dead letters: {} (want 2); second order: {:?} (want failed)",
        env.dead_letters().await,
        status(&env, second).await
    );
    Ok(())
}
