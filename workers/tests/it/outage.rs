//! A store that fails on its own side holds commands; it never dead-letters them.

use souk_stores::postgres::orders;
use souk_testkit::eventually;
use souk_topologies::{
    runtime::{BreakerState, Runtime},
    status,
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::{Env, command, env};
use souk_workers::orders::PLACE_CONSUMER;

/// Postgres fails every write of an order with an I/O error (SQLSTATE 58030, what it
/// answers when the disk under it returns EIO) until the test repairs it.
async fn disk(env: &Env, failing: bool) -> anyhow::Result<()> {
    let sql = match failing {
        true => {
            r#"create or replace function disk_fails() returns trigger language plpgsql as $$
               begin
                   raise exception 'could not read block 7 in file "base/16384/16385": Input/output error'
                       using errcode = 'io_error';
               end $$;
               create trigger disk_fails before insert or update on orders
                   for each row execute function disk_fails();"#
        }
        false => "drop trigger disk_fails on orders",
    };
    sqlx::raw_sql(sql).execute(&env.db.pool).await?;
    Ok(())
}

/// SQLSTATE class 58 is "system error: errors external to PostgreSQL itself" (I/O
/// errors, files gone): the store's fault, never the command's. It was classified
/// poison, so during a disk failure every command was dead-lettered at once and its
/// order marked failed.
#[tokio::test]
async fn an_io_error_in_postgres_holds_commands_instead_of_dead_lettering_them() -> anyhow::Result<()> {
    let env = env().await?;
    disk(&env, true).await?;
    let registry = souk_workers::registry(env.db.pool.clone());
    let runtime = Runtime::build(&env.publisher, &env.topology, &registry, &["orders".to_owned()]).await?;
    let cancel = CancellationToken::new();
    let run = tokio::spawn(runtime.run(cancel.clone()));
    let client = env.publisher.jetstream().client();

    let cmd = command();
    env.send(&format!("orders.place:{}:{}", cmd.tenant, cmd.order_id), &cmd).await?;
    // Either the pool holds it (breaker open) or it was dead-lettered: whichever first.
    let held = eventually(Duration::from_secs(15), || async {
        let pools = status::read_pools(&client).await?;
        let open = pools.iter().any(|p| p.name == "orders" && p.breaker != BreakerState::Closed);
        anyhow::Ok((open || env.dead_letters().await? > 0).then_some(()))
    })
    .await;
    held?;
    assert_eq!(env.dead_letters().await?, 0, "dead-lettered during the disk failure");
    disk(&env, false).await?;
    let accepted = eventually(Duration::from_secs(30), || async {
        let order = orders::get(&env.db.pool, cmd.order_id).await.ok()??;
        (order.status == "accepted").then_some(())
    })
    .await;
    cancel.cancel();
    run.await?;
    accepted?;
    assert_eq!(env.dead_letters().await?, 0);
    Ok(())
}

async fn breaker(env: &Env, pool: &str) -> Option<BreakerState> {
    let client = env.publisher.jetstream().client();
    let pools = status::read_pools(&client).await.ok()?;
    pools.into_iter().find(|p| p.name == pool).map(|p| p.breaker)
}

/// Deliveries of `orders-place` so far (a redelivery counts again).
async fn deliveries(env: &Env) -> anyhow::Result<u64> {
    let stream = env.js.get_stream("CMD").await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(stream.consumer_info(PLACE_CONSUMER).await?.delivered.consumer_sequence)
}

/// A migration (`alter table`, a non-concurrent `create index`, `vacuum full`) holds a
/// lock on `orders` that blocks every insert, for minutes on a big table. Handlers hang
/// until their timeout; the probe (`select pg_is_in_recovery()`) passed, so each
/// timeout counted as the commands' own fault: every command in flight was retried on
/// the backoff schedule and dead-lettered after its fifth timeout, its order `failed`.
/// The probe now asks for the handler's write locks (`nowait`): the store is not
/// taking writes, the pool holds its commands until it does.
#[tokio::test]
async fn a_table_locked_by_a_migration_holds_commands_instead_of_spending_their_attempts()
-> anyhow::Result<()> {
    use sqlx::Connection;
    let env = env().await?;
    let mut migration = sqlx::PgConnection::connect(&env.db.url).await?;
    sqlx::raw_sql("begin; lock table orders in access exclusive mode").execute(&mut migration).await?;
    let registry = souk_workers::registry(env.db.pool.clone());
    let runtime = Runtime::build(&env.publisher, &env.topology, &registry, &["orders".to_owned()]).await?;
    let cancel = CancellationToken::new();
    let run = tokio::spawn(runtime.run(cancel.clone()));

    let cmd = command();
    env.send(&format!("orders.place:{}:{}", cmd.tenant, cmd.order_id), &cmd).await?;
    // The handler times out after 20 s (as shipped); then the command is either held
    // (breaker open) or retried (delivered again): whichever comes first.
    eventually(Duration::from_secs(60), || async {
        let open = breaker(&env, "orders").await.is_some_and(|b| b != BreakerState::Closed);
        (open || deliveries(&env).await.ok()? > 1).then_some(())
    })
    .await?;
    assert_eq!(deliveries(&env).await?, 1, "the lock cost the command a delivery attempt");

    sqlx::raw_sql("rollback").execute(&mut migration).await?;
    eventually(Duration::from_secs(40), || async {
        let order = orders::get(&env.db.pool, cmd.order_id).await.ok()??;
        (order.status == "accepted").then_some(())
    })
    .await?;
    cancel.cancel();
    run.await?;
    assert_eq!(deliveries(&env).await?, 1, "held, never redelivered");
    assert_eq!(env.dead_letters().await?, 0);
    Ok(())
}
