-- Failed handler attempts, for `souk trace` (issue 11, item 5): the runtime records each
-- delivery whose handler failed — retryable errors, timeouts, panics, poison, and the
-- first dependency failure of a held delivery — from a queue, off the messages' path.
-- Found by (consumer, message id), as the inbox is; deleted by housekeeping with the
-- inbox's retention.
create table failed_attempts (
    id          bigint generated always as identity primary key,
    consumer    text not null,
    message_id  text,
    stream      text not null,
    stream_seq  bigint not null,
    delivery    integer not null,
    -- retryable | timeout | panic | poison | dependency
    class       text not null,
    code        text not null,
    -- at most 1,024 characters (cut by the runtime)
    error       text not null,
    -- what the runtime did then: retry | held | dead-letter | dead-letter-failed
    then_did    text not null,
    at          timestamptz not null
);
create index failed_attempts_message on failed_attempts (consumer, message_id) where message_id is not null;
create index failed_attempts_at on failed_attempts (at);

-- A dead letter an operator redrove left the DLQ: its record says when, and goes with
-- housekeeping's retention (a purged one's record goes at once; one the DLQ stream
-- dropped — limits, age, a re-created stream — goes at the next housekeeping).
alter table dead_letters add column redriven_at timestamptz;
create index dead_letters_redriven on dead_letters (redriven_at) where redriven_at is not null;
