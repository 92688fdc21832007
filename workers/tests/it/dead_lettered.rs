//! Orders of dead-lettered commands read `failed`, whatever happened to the streams.

use souk_stores::postgres::orders;
use souk_testkit::eventually;
use souk_topologies::{apply::Mode, dead_letters, runtime::Runtime};
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
async fn a_command_dead_lettered_after_its_stream_was_recreated_still_fails_its_order() -> anyhow::Result<()>
{
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
        anyhow::Ok(
            (env.dead_letters().await? == 2 && status(&env, second).await.as_deref() == Some("failed"))
                .then_some(()),
        )
    })
    .await;
    stop.cancel();
    run.await?;
    assert!(
        read.is_ok(),
        "dead letters: {} (want 2); second order: {:?} (want failed)",
        env.dead_letters().await?,
        status(&env, second).await
    );
    Ok(())
}

/// A rule the store enforces refuses accepted orders until the test lifts it: the
/// command is dead-lettered at once, its order marked failed; lifted, a redrive passes.
async fn ban(env: &Env, banned: bool) -> anyhow::Result<()> {
    let sql = match banned {
        true => {
            r#"create or replace function refuse_all() returns trigger language plpgsql as $$
               begin
                   if new.status = 'accepted' then
                       raise exception 'not sold here' using errcode = 'check_violation';
                   end if;
                   return new;
               end $$;
               create trigger refuse_all before insert or update on orders
                   for each row execute function refuse_all();"#
        }
        false => "drop trigger refuse_all on orders",
    };
    sqlx::raw_sql(sql).execute(&env.db.pool).await?;
    Ok(())
}

/// Place an order while the rule refuses it, wait until it reads `failed`, lift the
/// rule and redrive its dead letter (the only one in `DLQ`).
async fn fail_then_redrive(env: &Env) -> anyhow::Result<uuid::Uuid> {
    ban(env, true).await?;
    let cmd = command();
    env.send(&format!("orders.place:{}:{}", cmd.tenant, cmd.order_id), &cmd).await?;
    eventually(Duration::from_secs(15), || async {
        (status(env, cmd.order_id).await.as_deref() == Some("failed")).then_some(())
    })
    .await?;
    ban(env, false).await?;
    let letters = dead_letters::list(&env.js, 10).await?;
    anyhow::ensure!(letters.len() == 1, "one dead letter: {letters:?}");
    dead_letters::replay(&env.publisher, letters[0].seq).await?;
    Ok(cmd.order_id)
}

/// An operator re-creates `DLQ` (a setting only a new stream takes): its sequences
/// start at 1 again. A redrive published its command with the id `replay:<DLQ
/// sequence>`, so redriving the first dead letter of the new stream reused the id of a
/// command redriven from the old one: `CMD`'s dedupe window (or the intake's inbox,
/// later) took it for that command, the redrive reported success, removed the dead
/// letter, and the order stayed `failed` for ever.
#[tokio::test]
async fn a_redrive_after_the_dead_letter_stream_was_recreated_accepts_its_order() -> anyhow::Result<()> {
    let env = env().await?;
    let (stop, run) = start_both(&env).await?;
    let first = fail_then_redrive(&env).await?;
    eventually(Duration::from_secs(15), || async {
        (status(&env, first).await.as_deref() == Some("accepted")).then_some(())
    })
    .await?;
    stop.cancel();
    run.await?;

    env.js.delete_stream("DLQ").await.map_err(|e| anyhow::anyhow!("{e}"))?;
    souk_topologies::apply::apply(&env.js, &env.topology, Mode::Apply).await?;

    let (stop, run) = start_both(&env).await?;
    let second = fail_then_redrive(&env).await?;
    let accepted = eventually(Duration::from_secs(15), || async {
        (status(&env, second).await.as_deref() == Some("accepted")).then_some(())
    })
    .await;
    stop.cancel();
    run.await?;
    assert!(accepted.is_ok(), "the redriven order reads {:?}, not accepted", status(&env, second).await);
    assert_eq!(
        env.count("outbox where subject = 'souk.evt.orders.accepted'").await?,
        2,
        "one OrderAccepted per order"
    );
    Ok(())
}

/// Only the pools named, with the real handlers.
async fn start_only(
    env: &Env,
    pools: &[&str],
) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
    let registry = souk_workers::registry(env.db.pool.clone());
    let only: Vec<String> = pools.iter().map(|p| (*p).to_owned()).collect();
    let runtime = Runtime::build(&env.publisher, &env.topology, &registry, &only).await?;
    let cancel = CancellationToken::new();
    Ok((cancel.clone(), tokio::spawn(runtime.run(cancel))))
}

/// An unreadable command is dead-lettered and redriven (say, in the hope a fix reads
/// it) before the dead-lettered pool saw its first dead letter, and is dead-lettered
/// again. The second dead letter names the redrive's id (`replay:…`) as the original
/// message id, not the ingress's `orders.place:<tenant>:<order id>`: the order could
/// not be found and stayed `pending` for ever. The ingress's causation id, which a
/// redrive keeps, still names the order.
#[tokio::test]
async fn an_unreadable_command_dead_lettered_again_after_a_redrive_still_fails_its_order()
-> anyhow::Result<()> {
    use async_nats::HeaderMap;
    use souk_pipelines::{Message, headers, orders::PlaceOrder};
    use souk_stores::postgres::idempotency::{self, Claim};
    use souk_topologies::publisher::OutgoingMessage;

    let env = env().await?;
    let order_id = uuid::Uuid::now_v7();
    let claim = Claim {
        tenant: "t1".into(),
        principal: "u1".into(),
        key: "k-unreadable".into(),
        request_hash: vec![1],
        order_id,
    };
    idempotency::claim(&env.db.pool, &[claim]).await?;
    // As the ingress sends it, but with a body no release reads.
    let msg_id = format!("orders.place:t1:{order_id}");
    let mut h = HeaderMap::new();
    h.insert(headers::SCHEMA, PlaceOrder::schema_header().as_str());
    h.insert(headers::TENANT, "t1");
    h.insert(headers::CAUSATION_ID, msg_id.as_str());
    env.publisher
        .publish(OutgoingMessage {
            subject: PlaceOrder::SUBJECT.into(),
            msg_id,
            headers: h,
            payload: "not an order".into(),
        })
        .await?;

    let (stop, run) = start_only(&env, &["orders"]).await?;
    eventually(Duration::from_secs(15), || async {
        anyhow::Ok((env.dead_letters().await? == 1).then_some(()))
    })
    .await?;
    let letters = dead_letters::list(&env.js, 10).await?;
    dead_letters::replay(&env.publisher, letters[0].seq).await?;
    // Dead-lettered again: one dead letter, not the first.
    eventually(Duration::from_secs(15), || async {
        let letters = dead_letters::list(&env.js, 10).await.ok()?;
        (letters.len() == 1 && letters[0].seq > 1).then_some(())
    })
    .await?;
    stop.cancel();
    run.await?;

    let (stop, run) = start_only(&env, &["orders-dead-lettered"]).await?;
    let failed = eventually(Duration::from_secs(15), || async {
        (status(&env, order_id).await.as_deref() == Some("failed")).then_some(())
    })
    .await;
    stop.cancel();
    run.await?;
    assert!(failed.is_ok(), "the order reads {:?}, not failed", status(&env, order_id).await);
    Ok(())
}

/// Rolling deploys: a new release dead-letters a command it wrote in a newer schema
/// (here: refused by a business rule), and a process not yet upgraded takes the dead
/// letter. It cannot read the command, which is not the dead letter's fault: it must
/// wait for the upgrade, as the intake pool waits with such a command. It took the
/// "unreadable" path instead: the order was written `failed` with no lines, total 0 and
/// currency `XXX`, and the dead letter recorded as done, so the upgraded reader never
/// wrote the real order.
#[tokio::test]
async fn a_dead_letter_of_a_newer_schema_waits_for_the_upgrade() -> anyhow::Result<()> {
    use async_nats::HeaderMap;
    use futures::StreamExt;
    use souk_pipelines::{Message, encode, headers, orders::PlaceOrder};
    use souk_stores::postgres::idempotency::{self, Claim};
    use souk_topologies::publisher::OutgoingMessage;
    use souk_workers::orders::DEAD_LETTERED_CONSUMER;

    let env = env().await?;
    let cmd = command();
    let claim = Claim {
        tenant: cmd.tenant.clone(),
        principal: cmd.buyer_id.clone(),
        key: "k-newer".into(),
        request_hash: vec![1],
        order_id: cmd.order_id,
    };
    idempotency::claim(&env.db.pool, &[claim]).await?;
    let original = format!("orders.place:{}:{}", cmd.tenant, cmd.order_id);
    // The dead letter as the newer release's intake pool stores it.
    let mut h = HeaderMap::new();
    h.insert(headers::SCHEMA, format!("{}/v{}", PlaceOrder::SCHEMA, PlaceOrder::VERSION + 1).as_str());
    h.insert(headers::TENANT, cmd.tenant.as_str());
    h.insert(headers::CAUSATION_ID, original.as_str());
    h.insert(headers::DLQ_MSG_ID, original.as_str());
    h.insert(headers::DLQ_CONSUMER, "orders-place");
    h.insert(headers::DLQ_SUBJECT, PlaceOrder::SUBJECT);
    h.insert(headers::DLQ_ERROR, "invalid_order: not sold here");
    let client = env._nats.client().await?;
    let mut naks = client
        .subscribe(format!("$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.DLQ.{DEAD_LETTERED_CONSUMER}"))
        .await?;
    client.flush().await?;
    env.publisher
        .publish(OutgoingMessage {
            subject: "souk.dlq.orders-place".into(),
            msg_id: format!("dlq:orders-place:{original}"),
            headers: h,
            payload: encode(&cmd).into(),
        })
        .await?;

    let naked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let naked = naked.clone();
        tokio::spawn(async move {
            if naks.next().await.is_some() {
                naked.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let (stop, run) = start_only(&env, &["orders-dead-lettered"]).await?;
    // Settled either way: deferred (naked), or applied (its order written).
    let deferred = eventually(Duration::from_secs(15), || async {
        if status(&env, cmd.order_id).await.is_some() {
            return Some(false);
        }
        naked.load(std::sync::atomic::Ordering::SeqCst).then_some(true)
    })
    .await;
    watch.abort();
    stop.cancel();
    run.await?;
    assert_eq!(status(&env, cmd.order_id).await, None, "written by a reader that cannot read it");
    assert!(matches!(deferred, Ok(true)), "not deferred: {deferred:?}");
    Ok(())
}
