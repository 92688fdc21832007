-- 0029 let a delivery ignore `pending` call lines of its own message id, taken for the
-- lines of its dead earlier delivery. But one message id can be live twice at once: the
-- relay re-publishing a row after the dedupe window, a dead letter redriven twice, a
-- delivery whose progress acks failed past its ack wait while its process went on
-- calling. The second then failed over past the first's call and both providers
-- authorized (review, eleventh session). A line of the same message now waits like any
-- other. A delivery that really died left its line older than the in-flight window by
-- the time its message comes back: JetStream redelivers it an ack wait after the last
-- progress ack (sent every third of the ack wait), and a payments consumer's ack wait
-- is at least 1.5 × the window (60 s shipped; a node warns of a shorter one, with which
-- such a redelivery only waits for the line to age). The message id stays on the line,
-- for operators.
create or replace function payment_attempt_start(
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
               or (outcome = 'pending' and at > clock_timestamp() - p_in_flight)));
    return found;
end $$;
