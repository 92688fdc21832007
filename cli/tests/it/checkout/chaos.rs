//! Chaos (fixed seed): 2,000 checkouts while two `souk worker` processes are killed
//! (SIGKILL: handlers cut off wherever they are — mid-transaction, mid-provider call,
//! between commit and ack) and started again at random times, both payment sandboxes
//! inject 20% faults, and nats-server is killed and restarted once. Afterwards every
//! order has ended (`confirmed` or `cancelled`), money moved at most once per order and
//! step and under no other key, the captured total — by the sandboxes' own books — is
//! what the confirmed orders cost, stock is conserved, and every 202 has its order.

use super::*;
use souk_sandbox::payments::Faults;
use souk_testkit::{
    StackOptions,
    catalog::{for_sale, seed},
};
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Instant,
};

/// Checkouts in the run (each one `POST /v1/checkout`, after its cart was filled).
const CHECKOUTS: usize = 2000;
/// Buyers checking out at once, each its checkouts one after another.
const CLIENTS: usize = 40;
const _: () = assert!(CHECKOUTS.is_multiple_of(CLIENTS), "every buyer checks out as often");
const SEED: u64 = 20_261_130;
/// (SKU, seller, price, stock): demand (~2.25 units a checkout) exceeds the stock, so
/// the last checkouts meet empty shelves at the ingress or in the saga.
const SKUS: [(&str, &str, i64, i64); 8] = [
    ("C-MUG", "potter", 1299, 450),
    ("C-BOWL", "potter", 2150, 450),
    ("C-TEA", "grocer", 849, 450),
    ("C-RICE", "grocer", 399, 450),
    ("C-HAT", "milliner", 2500, 450),
    ("C-CAP", "milliner", 1700, 450),
    ("C-PEN", "scribe", 250, 450),
    ("C-INK", "scribe", 620, 450),
];
/// Worker kills at least: the chaos goes on past the last answer until there were as
/// many (the sagas are still running then).
const KILLS: usize = 12;
/// The consumers' ack wait: longer than the other tests' 2 s. The run saturates both
/// cores, and a delivery whose progress acks are starved (or lost across the
/// nats-server restart) for an ack wait is delivered again; a 2 s ack wait let a
/// payment command collect max-deliver such deliveries in seconds and be dead-lettered
/// as a crash loop (the shipped ack waits are 30–60 s). A killed worker's messages come
/// back after it.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// Longest the sagas may take to end once the last checkout is answered.
const SETTLE: Duration = Duration::from_secs(240);

/// A small deterministic generator (xorshift64*): the same run for the same seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// 20% of every sandbox's requests fail: 503s, resets before processing, charges whose
/// answer is lost, and hangs longer than the call timeout.
fn faults(seed: u64) -> Faults {
    Faults {
        error_rate: 0.06,
        reset_rate: 0.06,
        lost_rate: 0.06,
        hang_rate: 0.02,
        hang: Duration::from_millis(1500),
        seed,
        ..Faults::default()
    }
}

/// What the buyers saw: the orders of their 202s, the checkouts refused (4xx), and
/// the checkouts posted (a buyer whose every line was sold out at the cart posts none).
#[derive(Default)]
struct Seen {
    accepted: HashMap<Uuid, String>,
    refused: usize,
    posted: usize,
}

/// Send `request` until it gets an answer other than 503 (or no answer: a server is
/// down, or a client timeout), within `deadline`.
async fn until_answered(
    request: impl Fn() -> reqwest::RequestBuilder,
    deadline: Instant,
) -> anyhow::Result<(u16, Value)> {
    loop {
        if let Ok(r) = request().timeout(Duration::from_secs(10)).send().await {
            let answered = read_body(r).await;
            if let Ok((status, body)) = answered
                && status != 503
            {
                return Ok((status, body));
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no answer but 503 before the deadline");
        // The client's back-off between retries, not synchronisation.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One buyer's checkouts: 1–2 lines of 1–2 units, mostly `tok_ok`.
async fn client(
    (http, base, token): (reqwest::Client, String, String),
    c: usize,
    checkouts: usize,
    seen: Arc<Mutex<Seen>>,
) -> anyhow::Result<()> {
    let mut rng = Rng::new(SEED ^ (c as u64 + 1));
    let url = |path: &str| format!("{base}{path}");
    for k in 0..checkouts {
        let deadline = Instant::now() + Duration::from_secs(120);
        let first = rng.below(SKUS.len() as u64) as usize;
        let lines = match rng.below(2) {
            0 => vec![first],
            _ => vec![first, (first + 1 + rng.below(SKUS.len() as u64 - 1) as usize) % SKUS.len()],
        };
        let mut in_cart = Vec::new();
        for i in lines {
            let (sku, quantity) = (SKUS[i].0, 1 + rng.below(2) as i64);
            let put = || {
                http.put(url(&format!("/v1/cart/items/{sku}")))
                    .bearer_auth(&token)
                    .json(&json!({"quantity": quantity}))
            };
            match until_answered(put, deadline).await? {
                (200, _) => in_cart.push(sku),
                (422, _) => {} // sold out (or held) now: the buyer leaves it
                (status, body) => anyhow::bail!("PUT {sku}: {status} {body}"),
            }
        }
        // A cart left empty (every line sold out) is checked out all the same: 422.
        let payment_token = match rng.below(100) {
            0..=2 => "tok_hard_decline",
            3..=4 => "tok_insufficient_funds",
            5 => "tok_soft_decline",
            _ => "tok_ok",
        };
        let key = format!("chaos-{c}-{k}");
        seen.lock().expect("lock").posted += 1;
        let post = || {
            http.post(url("/v1/checkout"))
                .bearer_auth(&token)
                .header("idempotency-key", &key)
                .json(&json!({"payment_token": payment_token}))
        };
        match until_answered(post, deadline).await? {
            (202, body) => {
                let id: Uuid = body["order_id"].as_str().unwrap_or_default().parse()?;
                let mut seen = seen.lock().expect("lock");
                anyhow::ensure!(seen.accepted.insert(id, token.clone()).is_none(), "two keys got order {id}");
            }
            (422, _) => {
                // Units sold out between the cart and the checkout (or before: an empty
                // cart): empty the cart.
                seen.lock().expect("lock").refused += 1;
                for sku in in_cart {
                    let delete = || http.delete(url(&format!("/v1/cart/items/{sku}"))).bearer_auth(&token);
                    until_answered(delete, deadline).await?;
                }
            }
            (status, body) => anyhow::bail!("checkout {key}: {status} {body}"),
        }
    }
    Ok(())
}

/// The two worker processes, each killed and started again at random times.
struct Workers {
    data: tempfile::TempDir,
    keys: String,
    running: Vec<Option<tokio::process::Child>>,
    kills: usize,
}

impl Workers {
    fn start(stack: &Stack, n: usize) -> anyhow::Result<Workers> {
        let data = tempfile::tempdir()?;
        let keys = crate::binary::jwt_keys(data.path(), &[("k1", &[7u8; 32])])?;
        let mut workers = Workers { data, keys, running: (0..n).map(|_| None).collect(), kills: 0 };
        workers.respawn_stopped(stack)?;
        Ok(workers)
    }

    /// SIGKILL worker `w`: no drain, whatever it was doing is cut off.
    async fn kill(&mut self, w: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.running[w].take() {
            child.start_kill()?;
            child.wait().await?;
            self.kills += 1;
        }
        Ok(())
    }

    /// Start again any worker that is not running (killed, or exited on its own: one
    /// started while nats-server was down gives up).
    fn respawn_stopped(&mut self, stack: &Stack) -> anyhow::Result<()> {
        for w in 0..self.running.len() {
            let exited = match &mut self.running[w] {
                Some(child) => child.try_wait()?.is_some(),
                None => true,
            };
            if exited {
                self.running[w] = Some(souk_worker(stack, self.data.path(), &self.keys, &[])?);
            }
        }
        Ok(())
    }

    async fn kill_all(&mut self) -> anyhow::Result<()> {
        for w in 0..self.running.len() {
            self.kill(w).await?;
        }
        Ok(())
    }
}

/// What an operator would look at when sagas do not end: sagas by state, step and
/// attempt, the oldest open ones, every consumer's backlog, the outbox, dead letters.
async fn evidence(stack: &Stack) -> String {
    let mut out = String::new();
    let by_state: Vec<(String, i32, i64)> =
        sqlx::query_as("select state, attempt, count(*) from sagas group by 1, 2 order by 1, 2")
            .fetch_all(&stack.db.pool)
            .await
            .unwrap_or_default();
    out += &format!("sagas (state, attempt, count): {by_state:?}\n");
    let open: Vec<(Uuid, String, i32, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
        "select order_id, state, attempt, deadline from sagas
         where state not in ('fulfilling', 'shipped', 'cancelled') order by updated_at limit 10",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap_or_default();
    out += &format!("oldest open sagas: {open:?}\n");
    for (id, ..) in open.iter().take(3) {
        let steps: Vec<(String, i32, Option<String>)> =
            sqlx::query_as("select step, attempt, outcome from saga_steps where order_id = $1 order by id")
                .bind(id)
                .fetch_all(&stack.db.pool)
                .await
                .unwrap_or_default();
        out += &format!("  {id} steps: {steps:?}\n");
    }
    let orders: Vec<(String, i64)> = sqlx::query_as("select status, count(*) from orders group by 1")
        .fetch_all(&stack.db.pool)
        .await
        .unwrap_or_default();
    out += &format!("orders by status: {orders:?}\n");
    for c in &stack.topology.consumers {
        let info = async { anyhow::Ok(stack.js.get_stream(&c.stream).await?.consumer_info(&c.name).await?) };
        match info.await {
            Ok(i) => {
                out += &format!(
                    "consumer {}: pending {}, ack pending {}, redelivered {}\n",
                    c.name, i.num_pending, i.num_ack_pending, i.num_redelivered
                )
            }
            Err(e) => out += &format!("consumer {}: {e}\n", c.name),
        }
    }
    out += &format!(
        "outbox unpublished: {:?}; DLQ: {:?}\n",
        stack.count("select 1 from outbox where published_at is null").await.ok(),
        stack.stream_messages("DLQ").await.ok()
    );
    out
}

#[tokio::test]
async fn checkouts_through_worker_restarts_provider_faults_and_a_nats_restart_keep_every_invariant()
-> anyhow::Result<()> {
    let started = Instant::now();
    eprintln!("chaos: started at {}", chrono::Utc::now());
    let stack = Stack::start_with(StackOptions {
        pools: false,
        rate_limit: None,
        ack_wait: ACK_WAIT,
        ..Default::default()
    })
    .await?;
    let products: Vec<_> =
        SKUS.iter().map(|(sku, s, price, stock)| for_sale(sku, s, *price, *stock)).collect();
    seed(&stack.db.pool, TENANT, &products).await?;
    for (i, sandbox) in stack.payment_sandboxes.iter().enumerate() {
        sandbox.set_faults(faults(SEED + i as u64)).map_err(anyhow::Error::msg)?;
    }
    let mut stack = stack;
    let mut workers = Workers::start(&stack, 2)?;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let share = CHECKOUTS / CLIENTS;
            let (seen, done) = (seen.clone(), done.clone());
            let buyer = (stack.http.clone(), stack.base.clone(), buyer(&stack, &format!("chaos-{c}")));
            tokio::spawn(async move {
                let result = client(buyer, c, share, seen).await;
                done.fetch_add(1, Ordering::SeqCst);
                result
            })
        })
        .collect();

    // The chaos: a worker killed and started again at random times; nats-server killed
    // and restarted once, when 40% of the checkouts are in.
    let mut rng = Rng::new(SEED);
    let restarted_nats = AtomicBool::new(false);
    while done.load(Ordering::SeqCst) < CLIENTS || workers.kills < KILLS {
        // The pauses are the chaos's schedule, not synchronisation.
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(3000))).await;
        let answered = { seen.lock().expect("lock").accepted.len() };
        if !restarted_nats.load(Ordering::SeqCst) && answered >= CHECKOUTS * 2 / 5 {
            restarted_nats.store(true, Ordering::SeqCst);
            stack.nats.kill().await?;
            stack.nats.restart().await?;
            continue;
        }
        workers.kill(rng.below(2) as usize).await?;
        tokio::time::sleep(Duration::from_millis(100 + rng.below(900))).await;
        workers.respawn_stopped(&stack)?;
    }
    for c in clients {
        c.await??;
    }
    workers.respawn_stopped(&stack)?;
    let clients_took = started.elapsed();
    let (accepted, refused, posted) = {
        let seen = seen.lock().expect("lock");
        (seen.accepted.clone(), seen.refused, seen.posted)
    };
    eprintln!(
        "chaos: {posted} checkouts answered in {clients_took:?}: {} accepted, {refused} refused; {} worker kills, nats restarted: {}",
        accepted.len(),
        workers.kills,
        restarted_nats.load(Ordering::SeqCst)
    );
    assert!(restarted_nats.load(Ordering::SeqCst), "nats-server was restarted during the run");
    assert!(workers.kills >= KILLS, "workers were killed during the run: {}", workers.kills);
    assert_eq!(posted, CHECKOUTS, "every checkout posted");
    assert_eq!(accepted.len() + refused, posted, "every checkout answered 202 (its own order) or 4xx");

    // Every saga ends within SETTLE of the last answer (the sweeper's deadlines included).
    let ended = eventually(SETTLE, || async {
        let open = stack.count("select 1 from orders where status not in ('confirmed', 'cancelled')").await?;
        // An order reads cancelled while its saga still gives money back (voiding_late,
        // refunding): those must end too before the books are read.
        let giving_back = stack
            .count("select 1 from sagas where state not in ('fulfilling', 'shipped', 'cancelled')")
            .await?;
        let unpublished = stack.count("select 1 from outbox where published_at is null").await?;
        anyhow::Ok((open == 0 && giving_back == 0 && unpublished == 0).then_some(()))
    })
    .await;
    if let Err(e) = ended {
        anyhow::bail!("{e}: orders did not all end\n{}", evidence(&stack).await);
    }
    if let Err(e) = stack.quiescent(Duration::from_secs(120)).await {
        anyhow::bail!("{e}: not quiescent\n{}", evidence(&stack).await);
    }
    eprintln!("chaos: every saga ended {:?} after the start", started.elapsed());
    check_invariants(&stack, &accepted).await?;
    workers.kill_all().await?;
    eprintln!("chaos: {:?} in all", started.elapsed());
    Ok(())
}

/// The invariants, read from the books once nothing moves.
async fn check_invariants(stack: &Stack, accepted: &HashMap<Uuid, String>) -> anyhow::Result<()> {
    // Every 202 has its order, and every order came from a 202.
    let orders: Vec<(Uuid, String, i64, Value)> =
        sqlx::query_as("select order_id, status, total_minor, lines from orders")
            .fetch_all(&stack.db.pool)
            .await?;
    let stored: HashSet<Uuid> = orders.iter().map(|o| o.0).collect();
    let answered: HashSet<Uuid> = accepted.keys().copied().collect();
    assert_eq!(stored, answered, "every 202 has an order, and nothing else");
    let stuck: Vec<_> = orders.iter().filter(|o| o.1 != "confirmed" && o.1 != "cancelled").collect();
    assert!(stuck.is_empty(), "orders neither confirmed nor cancelled: {stuck:?}");
    // Nothing left to wait on: an open saga (fulfilling, sellers to ship) must have a
    // deadline ahead of it, the sweeper's next look; every other has ended without one.
    let past: i64 = stack
        .count(
            "select 1 from sagas where (state = 'fulfilling' and (deadline is null or deadline < now()))
                or (state not in ('fulfilling', 'shipped') and deadline is not null)",
        )
        .await?;
    assert_eq!(past, 0, "sagas past their deadline, or ended with one");
    let unsagged: i64 = stack
        .count("select 1 from orders o left join sagas s using (order_id) where o.status = 'confirmed' and s.state is distinct from 'fulfilling'")
        .await?;
    assert_eq!(unsagged, 0, "every confirmed order's saga waits for its sellers");

    // Money: at most once per order and step at the sandboxes; the ledger agrees.
    let mut captured_confirmed = 0;
    // Cancelled orders whose authorization was never voided (money held on the card).
    let mut unvoided = Vec::new();
    for (id, status, total, _) in &orders {
        let [authorized, captured, voided, refunded] =
            [Operation::Authorize, Operation::Capture, Operation::Void, Operation::Refund]
                .map(|o| moved(stack, *id, o));
        assert!(authorized <= 1 && captured <= 1 && voided <= 1 && refunded <= 1, "{id}: money moved twice");
        let books = ledger(stack, *id).await?;
        match status.as_str() {
            "confirmed" => {
                assert_eq!((authorized, captured), (1, 1), "{id}: a confirmed order is charged once");
                assert_eq!((books.captured, books.refunded), (*total, 0), "{id}: {books:?}");
                captured_confirmed += total;
            }
            _ => {
                assert_eq!(
                    books.captured - books.refunded,
                    0,
                    "{id}: a cancelled order keeps no money: {books:?}"
                );
                assert_eq!(captured, refunded, "{id}: a capture at the sandbox was refunded");
                if authorized == 1 && captured == 0 && voided == 0 {
                    unvoided.push(*id);
                }
            }
        }
    }
    if !unvoided.is_empty() {
        let mut told = String::new();
        for id in unvoided.iter().take(3) {
            told += &order_evidence(stack, *id).await;
        }
        anyhow::bail!("{} cancelled orders keep an authorization never voided:\n{told}", unvoided.len());
    }
    let (captures, refunds): (i64, i64) = sqlx::query_as(
        "select (select coalesce(sum(amount_minor), 0)::bigint from payment_captures),
                (select coalesce(sum(amount_minor), 0)::bigint from payment_refunds)",
    )
    .fetch_one(&stack.db.pool)
    .await?;
    assert_eq!(captures - refunds, captured_confirmed, "the ledger: captured = the confirmed orders' totals");
    providers_books(stack, &orders, captured_confirmed)?;

    // Stock: conserved per SKU, nothing held, sold = what the confirmed orders bought.
    let mut bought: HashMap<String, i64> = HashMap::new();
    for (_, status, _, lines) in &orders {
        if status == "confirmed" {
            for line in lines.as_array().into_iter().flatten() {
                let sku = line["sku"].as_str().unwrap_or_default().to_owned();
                *bought.entry(sku).or_default() += line["quantity"].as_i64().unwrap_or_default();
            }
        }
    }
    for (sku, _, _, initial) in SKUS {
        let (on_hand, held, sold) = units(stack, sku).await?;
        assert_eq!(
            (on_hand + sold, held),
            (initial, 0),
            "{sku}: initial = available + held + sold, nothing held"
        );
        assert_eq!(
            sold,
            bought.get(sku).copied().unwrap_or_default(),
            "{sku}: sold what confirmed orders bought"
        );
    }
    let confirmed = orders.iter().filter(|o| o.1 == "confirmed").count();
    eprintln!(
        "chaos: {} orders, {confirmed} confirmed, {} cancelled",
        orders.len(),
        orders.len() - confirmed
    );
    let dead: Vec<(String, i32, String, Option<String>)> =
        sqlx::query_as("select consumer, attempts, error, message_id from dead_letters order by at limit 3")
            .fetch_all(&stack.db.pool)
            .await?;
    let mut dead = format!("{dead:?}");
    let first: Option<String> = sqlx::query_scalar("select message_id from dead_letters order by at limit 1")
        .fetch_optional(&stack.db.pool)
        .await?
        .flatten();
    if let Some(id) = first {
        let tried: Vec<(i32, String, String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "select delivery, class, code, then_did, at from failed_attempts where message_id = $1 order by at",
        )
        .bind(&id)
        .fetch_all(&stack.db.pool)
        .await?;
        dead += &format!("\nattempts of {id}: {tried:?}");
        let kinds: Vec<(String, String, String, String, i64)> = sqlx::query_as(
            "select consumer, class, code, then_did, count(*) from failed_attempts group by 1, 2, 3, 4 order by 1, 5 desc",
        )
        .fetch_all(&stack.db.pool)
        .await?;
        dead += &format!("\nfailed attempts: {kinds:?}");
        let when: Vec<(chrono::DateTime<chrono::Utc>, Option<String>)> =
            sqlx::query_as("select at, message_id from dead_letters order by at")
                .fetch_all(&stack.db.pool)
                .await?;
        dead += &format!("\ndead letters at: {when:?}");
    }
    assert_eq!(stack.stream_messages("DLQ").await?, 0, "nothing dead-lettered: {dead:?}");
    Ok(())
}

/// The sandboxes' own books, whatever souk recorded: money moved only under the keys
/// of stored orders' steps, once each; every payment ends captured (a confirmed order's,
/// in full) or given back (voided, or refunded in full); what they hold is what the
/// confirmed orders cost.
fn providers_books(
    stack: &Stack,
    orders: &[(Uuid, String, i64, Value)],
    captured_confirmed: i64,
) -> anyhow::Result<()> {
    let operations = [Operation::Authorize, Operation::Capture, Operation::Void, Operation::Refund];
    let expected: HashSet<String> =
        orders.iter().flat_map(|o| operations.map(|op| idempotency_key(o.0, op))).collect();
    let mut held = 0;
    let mut kept = 0;
    for sandbox in &stack.payment_sandboxes {
        for (key, times) in sandbox.moved_keys() {
            assert!(expected.contains(&key), "money moved under {key}, no stored order's step");
            assert_eq!(times, 1, "money moved {times} times under {key}");
        }
        for p in sandbox.payments() {
            match p.status {
                "captured" => kept += 1,
                "voided" | "refunded" => {}
                other => anyhow::bail!("payment {} ends {other}: {p:?}", p.id),
            }
            held += p.captured_minor - p.refunded_minor;
        }
    }
    let confirmed = orders.iter().filter(|o| o.1 == "confirmed").count();
    assert_eq!(kept, confirmed, "one captured payment per confirmed order, at the providers");
    assert_eq!(held, captured_confirmed, "the providers hold what the confirmed orders cost");
    Ok(())
}

/// One order's story: its saga's reason and steps, the payment answers recorded per
/// step, and every provider call made under its keys.
async fn order_evidence(stack: &Stack, id: Uuid) -> String {
    let reason: Option<(String, Option<String>)> =
        sqlx::query_as("select state, reason from sagas where order_id = $1")
            .bind(id)
            .fetch_optional(&stack.db.pool)
            .await
            .unwrap_or_default();
    let steps: Vec<(String, i32, Option<String>)> =
        sqlx::query_as("select step, attempt, outcome from saga_steps where order_id = $1 order by id")
            .bind(id)
            .fetch_all(&stack.db.pool)
            .await
            .unwrap_or_default();
    let results: Vec<(String, bool, Value)> = sqlx::query_as(
        "select operation, succeeded, result from payment_results where order_id = $1 order by at",
    )
    .bind(id)
    .fetch_all(&stack.db.pool)
    .await
    .unwrap_or_default();
    let attempts: Vec<(String, String, String)> = sqlx::query_as(
        "select idempotency_key, provider, outcome from payment_attempts where idempotency_key like $1 order by at",
    )
    .bind(format!("souk-{id}-%"))
    .fetch_all(&stack.db.pool)
    .await
    .unwrap_or_default();
    format!("order {id}: {reason:?}\n  steps {steps:?}\n  results {results:?}\n  attempts {attempts:?}\n")
}
