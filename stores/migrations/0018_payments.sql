-- The payments ledger (issue 10, item 5): what moved at which provider for each order.
-- Money moves at most once (DESIGN.md invariant 4), and the database itself refuses
-- what must never happen, whatever the code does: one authorization and at most one
-- capture per order (primary keys), no capture above the authorization or of a voided
-- one, no void of a captured one, refunds never above the capture (trigger
-- `payment_ledger_check`, which locks the order's authorization row so concurrent
-- inserts for one order serialise), and no row ever changed or removed afterwards.
create table payment_authorizations (
    order_id            uuid primary key,
    tenant              text not null,
    provider            text not null check (provider <> ''),
    provider_payment_id text not null check (provider_payment_id <> ''),
    amount_minor        bigint not null check (amount_minor > 0),
    currency            text not null check (currency ~ '^[A-Z]{3}$'),
    idempotency_key     text not null unique,
    at                  timestamptz not null default now(),
    unique (provider, provider_payment_id)
);

create table payment_captures (
    order_id        uuid primary key references payment_authorizations (order_id),
    amount_minor    bigint not null check (amount_minor > 0),
    idempotency_key text not null unique,
    at              timestamptz not null default now()
);

create table payment_voids (
    order_id        uuid primary key references payment_authorizations (order_id),
    idempotency_key text not null unique,
    at              timestamptz not null default now()
);

create table payment_refunds (
    id              bigint generated always as identity primary key,
    order_id        uuid not null references payment_captures (order_id),
    amount_minor    bigint not null check (amount_minor > 0),
    idempotency_key text not null unique,
    at              timestamptz not null default now()
);
create index payment_refunds_order on payment_refunds (order_id);

create function payment_ledger_check() returns trigger language plpgsql as $$
declare
    authorized bigint;
    captured bigint;
    refunded bigint;
begin
    select amount_minor into authorized from payment_authorizations where order_id = new.order_id for update;
    if not found then
        raise exception 'order % has no authorization', new.order_id using errcode = 'foreign_key_violation';
    end if;
    if tg_table_name = 'payment_captures' then
        if new.amount_minor > authorized then
            raise exception 'capture of % exceeds the authorized %', new.amount_minor, authorized
                using errcode = 'check_violation';
        end if;
        if exists (select 1 from payment_voids where order_id = new.order_id) then
            raise exception 'order % was voided: it cannot be captured', new.order_id using errcode = 'check_violation';
        end if;
    elsif tg_table_name = 'payment_voids' then
        if exists (select 1 from payment_captures where order_id = new.order_id) then
            raise exception 'order % was captured: it cannot be voided', new.order_id using errcode = 'check_violation';
        end if;
    elsif tg_table_name = 'payment_refunds' then
        select amount_minor into captured from payment_captures where order_id = new.order_id;
        if not found then
            raise exception 'order % has no capture to refund', new.order_id using errcode = 'foreign_key_violation';
        end if;
        select coalesce(sum(amount_minor), 0) into refunded from payment_refunds where order_id = new.order_id;
        if refunded + new.amount_minor > captured then
            raise exception 'refunds of order % would reach %, above the capture of %',
                new.order_id, refunded + new.amount_minor, captured using errcode = 'check_violation';
        end if;
    end if;
    return new;
end $$;

create trigger payment_captures_check before insert on payment_captures
    for each row execute function payment_ledger_check();
create trigger payment_voids_check before insert on payment_voids
    for each row execute function payment_ledger_check();
create trigger payment_refunds_check before insert on payment_refunds
    for each row execute function payment_ledger_check();

create function payment_ledger_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'the payments ledger is append-only (%)', tg_table_name;
end $$;
create trigger payment_authorizations_append_only before update or delete on payment_authorizations
    for each row execute function payment_ledger_append_only();
create trigger payment_captures_append_only before update or delete on payment_captures
    for each row execute function payment_ledger_append_only();
create trigger payment_voids_append_only before update or delete on payment_voids
    for each row execute function payment_ledger_append_only();
create trigger payment_refunds_append_only before update or delete on payment_refunds
    for each row execute function payment_ledger_append_only();

-- The answer given to each payment command (its idempotency key), declines and
-- exhaustion included, committed with the ledger row and the PaymentResult outbox row:
-- a redelivered command finds it and emits nothing new.
create table payment_results (
    idempotency_key text primary key,
    order_id        uuid not null,
    operation       text not null check (operation in ('authorize', 'capture', 'void', 'refund')),
    succeeded       boolean not null,
    result          jsonb not null,
    at              timestamptz not null default now()
);

-- Provider calls that may move money, written (in a transaction of their own) BEFORE
-- the call and closed after it: `pending` (in flight, or the worker died), `ambiguous`
-- (no answer: timeout, reset), `answered`, `not_processed` (refused before processing:
-- connection refused, 503). Before a key goes to another provider, every provider
-- whose calls for it are not all `not_processed` is asked for its status by the key:
-- no double charge across providers, even after a crash.
create table payment_attempts (
    id              uuid primary key,
    idempotency_key text not null,
    provider        text not null,
    outcome         text not null default 'pending'
                    check (outcome in ('pending', 'ambiguous', 'answered', 'not_processed')),
    at              timestamptz not null default now()
);
create index payment_attempts_key on payment_attempts (idempotency_key, provider);
