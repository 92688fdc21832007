-- Order intake: orders, the inbox (handled message ids), the outbox (messages to
-- publish, written in the handler's transaction) and ingress idempotency keys.

create table orders (
    order_id      uuid primary key,
    tenant        text not null,
    buyer_id      text not null,
    status        text not null check (status in ('accepted')),
    currency      char(3) not null,
    total_minor   bigint not null check (total_minor >= 0),
    lines         jsonb not null,
    placed_at     timestamptz not null,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);
create index orders_buyer on orders (tenant, buyer_id, created_at desc);

-- One row per (consumer, message): a redelivered message finds its row and is a no-op.
create table inbox (
    consumer    text not null,
    message_id  text not null,
    handled_at  timestamptz not null default now(),
    primary key (consumer, message_id)
);
create index inbox_handled_at on inbox (handled_at);

-- seq orders messages; rows of one aggregate are written by transactions that lock the
-- aggregate, so their seq order is their commit order.
create table outbox (
    seq           bigint generated always as identity primary key,
    id            uuid not null unique,
    aggregate_id  text not null,
    subject       text not null,
    headers       jsonb not null default '[]',
    payload       bytea not null,
    created_at    timestamptz not null default now(),
    published_at  timestamptz
);
create index outbox_pending on outbox (seq) where published_at is null;

create function outbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('souk_outbox', '');
    return null;
end $$;
create trigger outbox_notify after insert on outbox
    for each statement execute function outbox_notify();

-- The first request with a key wins; later ones must carry the same body.
create table idempotency_keys (
    tenant        text not null,
    principal     text not null,
    key           text not null,
    request_hash  bytea not null,
    order_id      uuid not null,
    created_at    timestamptz not null default now(),
    primary key (tenant, principal, key)
);
create index idempotency_keys_created_at on idempotency_keys (created_at);
create index idempotency_keys_order_id on idempotency_keys (order_id);
