-- A cart is checked out under one Idempotency-Key at a time: two checkouts of one cart
-- under two keys (a double tap, web and phone at once) each read the cart, each placed
-- an order, and both answered 202 — one cart, two orders, two charges. The checkout
-- claims its cart first (`checkout_key`, until `checkout_until`); another key's
-- checkout is 409 while the claim holds. The emptying clears it; a checkout refused
-- with a 4xx releases it; one that failed with a 5xx (its order may be stored) keeps it
-- until it expires, so that only a retry under the same key goes on meanwhile.
-- Old nodes ignore both columns.
alter table carts add column checkout_key text, add column checkout_until timestamptz;
