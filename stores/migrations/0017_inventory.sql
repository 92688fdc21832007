-- Inventory (stock holds for orders) and fulfilment (each seller's part of an order).

-- Units of one SKU. `on_hand` counts the units there are to sell, held ones included;
-- `held` those promised to orders in checkout; `sold` those whose orders committed
-- (a commit moves them out of `on_hand`). Available = on_hand - held, never negative.
-- Conservation (DESIGN invariant 5): between two seller writes, on_hand + sold — that
-- is available + held + sold — does not change.
-- `withdrawn`: units a seller took away while they were held (a write below `held`):
-- they stay on hand while held, so the promises in flight are kept, and leave on_hand
-- as their holds are released instead of returning to available.
-- The catalog pool writes on_hand (a product's `stock`) in its write's transaction;
-- the inventory pool writes held and sold.
create table stock (
    tenant     text not null,
    sku        text not null,
    on_hand    bigint not null check (on_hand >= 0),
    held       bigint not null default 0 check (held >= 0 and held <= on_hand),
    sold       bigint not null default 0 check (sold >= 0),
    withdrawn  bigint not null default 0 check (withdrawn >= 0 and withdrawn <= held),
    updated_at timestamptz not null default now(),
    primary key (tenant, sku)
);

-- Every live product's stock, for catalogs written before this migration (a deleted
-- product has none to sell).
insert into stock (tenant, sku, on_hand)
select tenant, sku, stock from products where deleted_at is null;

-- One order's reservation, all lines or none, and how it was decided. A reserve
-- replayed for an order already here answers from this row and changes nothing.
--   held      → committed (its units sold), released (on request) or expired (timer);
--   committed → released (a cancelled order gives its sold units back);
--   rejected  : nothing was held; `shortages` is the answer, replayed as it was.
create table stock_reservations (
    tenant      text not null,
    order_id    uuid not null,
    state       text not null check (state in ('held', 'rejected', 'committed', 'released', 'expired')),
    hold_until  timestamptz not null,
    shortages   jsonb check ((state = 'rejected') = (shortages is not null)),
    reserved_at timestamptz not null default now(),
    decided_at  timestamptz not null default now(),
    primary key (tenant, order_id)
);
-- The expiry sweeper's work list: holds whose time has come, earliest first.
create index stock_reservations_due on stock_reservations (hold_until) where state = 'held';

-- The lines of a reservation (one per SKU: lines of one SKU are merged).
create table stock_holds (
    tenant   text not null,
    order_id uuid not null,
    sku      text not null,
    quantity bigint not null check (quantity > 0),
    primary key (tenant, order_id, sku),
    foreign key (tenant, order_id) references stock_reservations on delete cascade
);

-- A seller's part of a confirmed order: requested by the saga, shipped by the seller.
create table fulfilments (
    tenant       text not null,
    seller       text not null,
    order_id     uuid not null,
    lines        jsonb not null,
    status       text not null check (status in ('requested', 'shipped')),
    tracking     text,
    shipped_by   text,
    requested_at timestamptz not null default now(),
    shipped_at   timestamptz check ((status = 'shipped') = (shipped_at is not null)),
    primary key (tenant, seller, order_id)
);
-- A seller's orders, newest first (keyset pages on (requested_at, order_id)).
create index fulfilments_seller_newest on fulfilments (tenant, seller, requested_at desc, order_id desc);
