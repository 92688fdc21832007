//! What the end-to-end failure tests share: a buyer that retries one order until it is
//! accepted, a node on a private Postgres with the shipped topology, a product the
//! store refuses, and a worker process's pools run apart from the stack's node.

use souk_stores::{
    postgres::{self as pg, PgOptions},
    search::SearchStore,
};
use souk_testkit::{PgServer, Stack, StackOptions, order_body};
use souk_topologies::{Topology, apply::Mode, publisher::Publisher, runtime::Runtime};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Place one order under `key`, retrying it (same key) after `pause` until it is
/// accepted, and return its order id. While a server is down the only other answer
/// allowed is 503: anything else fails the test, and so does no 202 by `deadline`.
pub(crate) async fn place_until_accepted(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    key: &str,
    sku: &str,
    deadline: Instant,
    pause: Duration,
) -> String {
    loop {
        let sent = http
            .post(format!("{base}/v1/orders"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&order_body(sku, 1))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(r) = sent {
            let status = r.status().as_u16();
            if status == 202 {
                let json: serde_json::Value = r.json().await.expect("a 202's body is JSON");
                return json["order_id"].as_str().expect("a 202 names its order").to_owned();
            }
            assert_eq!(status, 503, "only 202 or 503 while a server is down");
        }
        assert!(Instant::now() < deadline, "order {key} never accepted");
        // Client back-off between retries, not synchronisation.
        tokio::time::sleep(pause).await;
    }
}

/// Every Postgres pool of `topology`, apart from the stack's node, on a connection pool
/// with production settings: a worker process the test can stop and start. The search
/// indexer runs too when given the index (`Some(stack.search.clone())`: the stack holds
/// it, and tantivy has one writer); without it, nothing indexes product events.
pub(crate) fn start_worker(
    publisher: &Publisher,
    topology: &Topology,
    url: &str,
    search: Option<Arc<dyn SearchStore>>,
    payments: Option<Arc<souk_workers::payments::Gateway>>,
) -> anyhow::Result<(CancellationToken, JoinHandle<()>)> {
    let pool = pg::connect(&PgOptions::new(url))?;
    let (indexes, pays) = (search.is_some(), payments.is_some());
    let registry = souk_workers::registry_with(pool, &souk_workers::Dependencies { search, payments });
    let (publisher, topology) = (publisher.clone(), topology.clone());
    let cancel = CancellationToken::new();
    let run = cancel.clone();
    let task = tokio::spawn(async move {
        let only: Vec<String> = topology
            .pools
            .iter()
            .filter(|p| indexes || p.handler != souk_workers::catalog::INDEX_HANDLER)
            // The payments pools call providers: run with the stack's gateway (its
            // sandboxes), so an order's saga can end, or not at all.
            .filter(|p| {
                pays || ![souk_workers::payments::AUTHORIZE_HANDLER, souk_workers::payments::SETTLE_HANDLER]
                    .contains(&p.handler.as_str())
            })
            .map(|p| p.name.clone())
            .collect();
        let runtime = Runtime::build(&publisher, &topology, &registry, &only).await.expect("runtime");
        runtime.run(run).await;
    });
    Ok((cancel, task))
}

/// A node (ingress and relay, no pools) on `pg_server`, with the topology as shipped —
/// production timers — applied over the test one; and a publisher for workers the test
/// starts itself with [`start_worker`].
pub(crate) async fn shipped_stack(pg_server: &PgServer) -> anyhow::Result<(Stack, Topology, Publisher)> {
    let mut stack = Stack::start_with(StackOptions {
        rate_limit: None,
        postgres: Some(pg_server.url()),
        pools: false,
        ..Default::default()
    })
    .await?;
    stack.stop_node().await;
    let topology = souk_testkit::shipped_topology()?;
    souk_topologies::apply::apply(&stack.js, &topology, Mode::Apply).await?;
    stack.topology = topology.clone();
    stack.start_node().await?;
    let publisher = Publisher::new(stack.client.clone(), Duration::from_millis(1500));
    Ok((stack, topology, publisher))
}

/// A rule the store enforces (a non-transient error) refuses orders of product
/// `BANNED`: the handler fails such a command, and the runtime dead-letters it at once.
pub(crate) async fn refuse_banned_product(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        r#"create function refuse_banned() returns trigger language plpgsql as $$
           begin
               if new.status = 'accepted' and new.lines @> '[{"sku": "BANNED"}]' then
                   raise exception 'BANNED is not sold here' using errcode = 'check_violation';
               end if;
               return new;
           end $$;
           create trigger refuse_banned before insert or update on orders
               for each row execute function refuse_banned();"#,
    )
    .execute(pool)
    .await?;
    Ok(())
}
