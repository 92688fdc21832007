-- voiding_late: an authorization that turned up after the saga was cancelled is voided
-- as a step of its own (re-sent by the sweeper until answered), where the void used to
-- be sent once from `cancelled` and forgotten if it was not done.
alter table sagas drop constraint sagas_state_check;
alter table sagas add constraint sagas_state_check check (state in (
    'reserving', 'authorizing', 'committing', 'capturing', 'fulfilling', 'shipped',
    'releasing', 'unwinding', 'voiding', 'cancelled', 'refunding', 'voiding_late'));

-- fulfilling now has a deadline (a day): the sweeper re-sends the requests of the
-- sellers still awaited, so a request or answer lost with a stream is not lost for
-- good. Sagas confirmed before this release get theirs from now.
-- Spread over the day after, so that they do not all come due in one sweep.
update sagas set deadline = now() + interval '24 hours' + random() * interval '24 hours'
where state = 'fulfilling' and deadline is null;
