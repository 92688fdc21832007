-- A saga refunding a capture that turned up after it stopped using the payment: a step
-- of its own (sent again by the sweeper until answered), where the refund used to be
-- sent once from whatever state the saga was in and forgotten if it failed.
alter table sagas drop constraint sagas_state_check;
alter table sagas add constraint sagas_state_check check (state in (
    'reserving', 'authorizing', 'committing', 'capturing', 'fulfilling', 'shipped',
    'releasing', 'unwinding', 'voiding', 'cancelled', 'refunding'));
