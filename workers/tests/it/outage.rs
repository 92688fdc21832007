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
        let pools = status::read_pools(&client, Duration::from_secs(2)).await.ok()?;
        let open = pools.iter().any(|p| p.name == "orders" && p.breaker != BreakerState::Closed);
        (open || env.dead_letters().await > 0).then_some(())
    })
    .await;
    held?;
    assert_eq!(env.dead_letters().await, 0, "dead-lettered during the disk failure");
    disk(&env, false).await?;
    let accepted = eventually(Duration::from_secs(30), || async {
        let order = orders::get(&env.db.pool, cmd.order_id).await.ok()??;
        (order.status == "accepted").then_some(())
    })
    .await;
    cancel.cancel();
    run.await?;
    accepted?;
    assert_eq!(env.dead_letters().await, 0);
    Ok(())
}
