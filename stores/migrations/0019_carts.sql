-- Carts: one per buyer (tenant, principal), in Postgres. `carts` is the row every change
-- of a cart locks first, so concurrent changes of one cart serialise and its bound
-- (at most 100 items) holds; `cart_items` are its lines, each with the price and
-- currency the buyer last saw (to warn when the catalog's price changed since).
create table carts (
    tenant      text not null,
    buyer_id    text not null,
    updated_at  timestamptz not null default now(),
    primary key (tenant, buyer_id)
);

create table cart_items (
    tenant            text not null,
    buyer_id          text not null,
    sku               text not null,
    quantity          bigint not null check (quantity between 1 and 10000),
    seen_price_minor  bigint not null check (seen_price_minor >= 0),
    seen_currency     char(3) not null,
    added_at          timestamptz not null default now(),
    updated_at        timestamptz not null default now(),
    primary key (tenant, buyer_id, sku),
    foreign key (tenant, buyer_id) references carts (tenant, buyer_id) on delete cascade
);

-- The checkouts that emptied a cart: the order, and the lines (sku, quantity) it took.
-- Written with the emptying, after the order's command was stored; a checkout retried
-- under its Idempotency-Key after that finds its cart empty and is answered from here.
-- Expires with the idempotency keys (housekeeping).
create table cart_checkouts (
    tenant          text not null,
    buyer_id        text not null,
    order_id        uuid not null,
    lines           jsonb not null,
    checked_out_at  timestamptz not null default now(),
    primary key (tenant, buyer_id, order_id)
);
create index cart_checkouts_at on cart_checkouts (checked_out_at);
