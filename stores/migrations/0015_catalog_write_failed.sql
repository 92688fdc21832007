-- A catalog write that could not be applied reads `failed`, with the reason, instead of
-- `pending` for ever: its command was dead-lettered, or never handled before its
-- idempotency claim expired (dropped by CMD's max-age, purged, lost with a re-created
-- stream). Like a failed order it is not final: a redrive that applies it later
-- replaces the `failed` record with its real outcome.
-- (0012's unnamed checks on version and reason are catalog_writes_check and
-- catalog_writes_check1; they get names here.)
alter table catalog_writes drop constraint catalog_writes_outcome_check;
alter table catalog_writes drop constraint catalog_writes_check;
alter table catalog_writes drop constraint catalog_writes_check1;
alter table catalog_writes add constraint catalog_writes_outcome_check
    check (outcome in ('applied', 'rejected', 'failed'));
alter table catalog_writes add constraint catalog_writes_version_check
    check ((outcome = 'applied') = (version is not null));
alter table catalog_writes add constraint catalog_writes_reason_check
    check ((outcome <> 'applied') = (reason is not null));

-- When the write that made a product's current version was requested (`WriteProduct.
-- requested_at`). A write requested earlier that reaches the catalog pool later (a
-- retry after a transient error, a redelivery, a redrive) is superseded: applying it
-- would put an older intent over a newer one. Null for rows written before this.
alter table products add column requested_at timestamptz;
