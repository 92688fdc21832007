-- The delivery (its message id) that logged each provider call. A call still `pending`
-- keeps other deliveries of its key waiting (they must not call another provider, or
-- record the key's answer, while it may move money) — but not a redelivery of the same
-- message: JetStream redelivers a message only once the delivery holding it stopped
-- acknowledging progress (its process died mid-call), so that call is not under way any
-- more. Waiting on it made each redelivery wait out the window while more processes
-- died, until the message read as a crash loop and was dead-lettered (found by the
-- chaos test once its workers were killed, not drained). Lines of releases before have
-- no message id: they keep everyone waiting, as before.
alter table payment_attempts add column message_id text;

-- payment_attempt_start (0025) with the delivery: logged with the line, and its own
-- earlier lines are not another delivery's call in flight. The five-argument version
-- stays for nodes of the release before during a rolling deploy.
create function payment_attempt_start(
    p_id uuid, p_key text, p_provider text, p_checked text[], p_in_flight interval, p_message_id text
) returns boolean language plpgsql volatile as $$
begin
    perform pg_advisory_xact_lock(hashtext('payment-key'), hashtext(p_key));
    insert into payment_attempts (id, idempotency_key, provider, message_id)
    select p_id, p_key, p_provider, p_message_id
    where p_checked is null or not exists (
        select 1 from payment_attempts
        where idempotency_key = p_key and provider <> p_provider and outcome <> 'not_processed'
          and (provider <> all (p_checked)
               or (outcome = 'pending' and at > clock_timestamp() - p_in_flight
                   and message_id is distinct from p_message_id)));
    return found;
end $$;
