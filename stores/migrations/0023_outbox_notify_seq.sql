-- The outbox notification names the highest seq its statement inserted. A relay reads
-- rows committed just before its round and then receives their notifications: with the
-- seq it can tell those (rows it has read) from rows it has not, and sleep on instead
-- of running an empty round — measured at ~5 empty rounds (read transactions) per
-- checkout before. A relay that cannot parse the payload (it is '' from a node not yet
-- migrated, or anything else) treats it as new rows.
create or replace function outbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('souk_outbox', coalesce((select max(seq) from inserted), 0)::text);
    return null;
end $$;
drop trigger outbox_notify on outbox;
create trigger outbox_notify after insert on outbox
    referencing new table as inserted
    for each statement execute function outbox_notify();
