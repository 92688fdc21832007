-- Logging a provider call is also where two deliveries of one key (a re-sent command
-- running beside the original in another process, an operator's retry) are kept from
-- calling two providers: under the key's lock, a call is refused while another
-- provider may hold money under the key and the caller has not checked it — a line
-- it did not read (another delivery's, logged since), or one still `pending` from the
-- last `in_flight` (a call that may not have reached its provider when the caller
-- asked for the status). One statement from the client, one transaction; each
-- statement of a volatile function takes a fresh snapshot, so the check after the
-- lock sees every line committed before it.
create function payment_attempt_start(
    p_id uuid, p_key text, p_provider text, p_checked text[], p_in_flight interval
) returns boolean language plpgsql volatile as $$
begin
    perform pg_advisory_xact_lock(hashtext('payment-key'), hashtext(p_key));
    insert into payment_attempts (id, idempotency_key, provider)
    select p_id, p_key, p_provider
    where p_checked is null or not exists (
        select 1 from payment_attempts
        where idempotency_key = p_key and provider <> p_provider and outcome <> 'not_processed'
          and (provider <> all (p_checked)
               or (outcome = 'pending' and at > clock_timestamp() - p_in_flight)));
    return found;
end $$;
