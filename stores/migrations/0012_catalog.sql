-- The catalog write path: products and the outcome of every catalog write.

-- A product of one tenant, keyed by SKU (one seller owns a SKU). `version` only grows:
-- every applied write, a delete included, takes the previous one plus one, so readers
-- (the indexer, ETags, If-Match) order changes by it. A delete keeps the row
-- (`deleted_at`): past orders still point at it, and a later PUT revives it with a higher
-- version. Fields a query filters or sorts by are columns; attributes and images jsonb.
create table products (
    tenant       text not null,
    sku          text not null,
    seller       text not null,
    title        text not null,
    description  text not null,
    category     text not null,
    attributes   jsonb not null,
    price_minor  bigint not null check (price_minor >= 0),
    currency     char(3) not null,
    stock        bigint not null check (stock >= 0),
    images       jsonb not null,
    version      bigint not null check (version >= 1),
    deleted_at   timestamptz,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    primary key (tenant, sku)
);
-- A seller's listing, in SKU order (keyset pagination), live products only.
create index products_seller on products (tenant, seller, sku) where deleted_at is null;

-- What became of each catalog write (written by the catalog pool in the transaction of
-- the write), so a client that got 202 can read the outcome: applied at a version, or
-- rejected with a reason (version conflict, SKU owned by another seller, patch or
-- delete of a missing or deleted product, a patch that leaves the product invalid).
create table catalog_writes (
    tenant      text not null,
    write_id    uuid not null,
    seller      text not null,
    sku         text not null,
    actor       text not null,
    outcome     text not null check (outcome in ('applied', 'rejected')),
    version     bigint check ((outcome = 'applied') = (version is not null)),
    reason      text check ((outcome = 'rejected') = (reason is not null)),
    decided_at  timestamptz not null default now(),
    primary key (tenant, write_id)
);
create index catalog_writes_decided_at on catalog_writes (decided_at);
