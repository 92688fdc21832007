-- The order saga: one row per order (where it is, how many times its current step's
-- command was sent, until when the saga waits for the reply, and a version for
-- optimistic concurrency), and a log of its steps. Orders read the outcome a client
-- acts on: confirmed, cancelled (with a reason written for the buyer) or shipped.
alter table orders drop constraint orders_status_check;
alter table orders add constraint orders_status_check
    check (status in ('accepted', 'failed', 'confirmed', 'cancelled', 'shipped'));

create table sagas (
    order_id          uuid primary key references orders (order_id),
    tenant            text not null,
    state             text not null check (state in (
                          'reserving', 'authorizing', 'committing', 'capturing', 'fulfilling', 'shipped',
                          'releasing', 'unwinding', 'voiding', 'cancelled')),
    -- Sends of the current step's command (1 on entering a state; the sweeper adds one
    -- per re-send and compensates past the limit).
    attempt           integer not null default 1 check (attempt >= 1),
    -- When the sweeper acts if no reply came; null while the saga waits for nobody it
    -- can hurry (final states, and sellers shipping a confirmed order).
    deadline          timestamptz,
    version           bigint not null default 1,
    -- Why the order was cancelled, written for the buyer.
    reason            text,
    -- The provider token (`tok_…`, never a card number) the authorize step sends.
    payment_token     text,
    -- Until when the stock hold lasts (ReserveStock.hold_until).
    hold_until        timestamptz not null,
    -- Sellers asked to ship who have not shipped yet.
    awaiting_sellers  text[] not null default '{}',
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now()
);
-- The sweeper's question: which sagas are past their deadline.
create index sagas_due on sagas (deadline) where deadline is not null;
create index sagas_state on sagas (state, updated_at desc);

-- One row per command sent (started) and its reply (finished, with the outcome), and
-- one finished row per reply the saga ignored (stale, duplicated, out of order).
create table saga_steps (
    id           bigint generated always as identity primary key,
    order_id     uuid not null references sagas (order_id),
    step         text not null,
    attempt      integer not null,
    started_at   timestamptz not null default now(),
    finished_at  timestamptz,
    outcome      text
);
create index saga_steps_order on saga_steps (order_id, id);
