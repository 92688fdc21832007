-- Orders that can never be accepted read `failed`, with the reason (a dead-lettered
-- intake command); a redrive that succeeds later moves them on to `accepted`.
alter table orders drop constraint orders_status_check;
alter table orders add constraint orders_status_check check (status in ('accepted', 'failed'));
alter table orders add column reason text;

-- Outbox rows that can never be published (no stream for the subject, too large, a
-- refused header) are parked after a few tries, with their error, instead of blocking
-- every row behind them. `tries` counts failed publishes with a permanent error.
alter table outbox add column tries integer not null default 0;
alter table outbox add column last_error text;
alter table outbox add column parked_at timestamptz;
-- Parked rows are few; the relay asks, for every pending row, whether its aggregate
-- has one parked before it (those wait behind it, keeping per-aggregate order).
create index outbox_parked on outbox (aggregate_id, seq) where parked_at is not null;
drop index outbox_pending;
create index outbox_pending on outbox (seq) where published_at is null and parked_at is null;

-- The relay lease's epoch: incremented by each relay that takes the lease, checked by
-- its marks in the same transaction, so a relay that lost the lease mid-round cannot
-- mark rows as published once another has taken over.
create table outbox_lease (
    id     boolean primary key default true check (id),
    epoch  bigint not null
);
insert into outbox_lease (epoch) values (0);
