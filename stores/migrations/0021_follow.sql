-- Following one order through every pipeline (`souk trace`): each record says where its
-- message is in JetStream, so the trace reads the few messages it needs by stream
-- sequence instead of scanning streams, and finds an order's records by index.

-- Where each handled message sat in its stream, and on which delivery it was handled
-- (delivery - 1 earlier attempts failed or were cut). Null for rows written before.
alter table inbox add column stream text;
alter table inbox add column stream_seq bigint;
alter table inbox add column delivered integer;

-- Where the relay stored each row (from its PubAck; a duplicate ack names the copy
-- stored first). Null until published, and for rows published before this.
alter table outbox add column stream text;
alter table outbox add column stream_seq bigint;
-- An order's rows are found by their aggregates (the order id, `inventory:<tenant>:<id>`,
-- `fulfilment:<tenant>:<id>`).
create index outbox_aggregate on outbox (aggregate_id, seq);

-- The trace (W3C trace id) of the command that placed the order: `souk trace` takes a
-- trace id as well as an order id.
alter table orders add column trace_id text;
create index orders_trace_id on orders (trace_id) where trace_id is not null;

-- Where the runtime stored each dead letter (DLQ holds every consumer's; scanning it is
-- not an option), by the original's message id. Written after the dead letter's PubAck,
-- best effort: Postgres being down must not hold dead letters back. A re-created DLQ
-- numbers from 1 again: the newer dead letter at a sequence replaces the older record.
create table dead_letters (
    dlq_stream  text not null,
    dlq_seq     bigint not null,
    consumer    text not null,
    message_id  text,
    stream      text not null,
    stream_seq  bigint not null,
    attempts    integer not null,
    error       text not null,
    at          timestamptz not null default now(),
    primary key (dlq_stream, dlq_seq)
);
create index dead_letters_message_id on dead_letters (message_id) where message_id is not null;
