-- The deployment (its JetStream, named by an id kept there) whose events this database's
-- outbox feeds. Claimed by the first souk process that starts against the database and
-- checked by every later one: two deployments sharing one database would share one
-- outbox and one relay lease, and one relay would publish the other's events into its
-- own EVT. One row at most.
create table deployment (
    singleton  boolean primary key default true check (singleton),
    id         text not null,
    claimed_at timestamptz not null default now()
);
