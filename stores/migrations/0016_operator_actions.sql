-- What operators and internal teams did to the running pipeline: redrives, purges,
-- pauses, saga retries and compensations. Append-only: rows are never updated or
-- deleted (the trigger refuses both), so the record can be trusted after the fact.
create table operator_actions (
    id          bigint generated always as identity primary key,
    at          timestamptz not null default now(),
    -- The token's subject (or `cli:<user>` for a local command without a token).
    actor       text not null check (actor <> ''),
    -- What was done, `<area>.<verb>`: `dlq.redrive`, `pool.pause`, `saga.retry` …
    action      text not null check (action ~ '^[a-z-]+\.[a-z-]+$'),
    -- What it was done to: a consumer, a pool, an order id …
    target      text not null,
    -- Which messages (stream sequences, ids), the filter used, the outcome.
    details     jsonb not null default '{}'
);
create index operator_actions_at on operator_actions (at desc);
create index operator_actions_target on operator_actions (target, at desc);

create function operator_actions_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'operator_actions is append-only';
end $$;
create trigger operator_actions_append_only before update or delete on operator_actions
    for each row execute function operator_actions_append_only();
