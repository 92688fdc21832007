-- Answers this release no longer records as a key's answer (see the payments handler's
-- `is_the_keys_answer`), recorded by earlier releases: the ledger's own refusals of a
-- settle (no provider called; a void refused for want of an authorization used up the
-- void's key) and voids and refunds out of retry budget. Forgotten, a re-sent command
-- is judged afresh — by the ledger as it is now, or by the provider under the same key
-- — instead of being answered the old refusal again.
delete from payment_results
where not succeeded
  and result->>'provider' is null
  and (operation in ('void', 'refund')
       or (operation = 'capture' and result->'failure'->>'kind' = 'declined'));
