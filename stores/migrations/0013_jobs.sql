-- Jobs for internal teams (souk-jobs): souk's own record of each job, what operators
-- see (`souk jobs`, `GET /v1/jobs`). apalis-postgres keeps its queue in its own schema
-- (`apalis`, with its own migration table `apalis._sqlx_migrations`), applied right
-- after these by `souk_stores::postgres::migrate`; an apalis task carries only a job id.
create table jobs (
    id               uuid primary key,
    tenant           text not null,
    kind             text not null check (kind in ('catalog-import', 'reindex')),
    state            text not null default 'queued'
                     check (state in ('queued', 'running', 'done', 'failed', 'cancelled')),
    -- catalog-import: the seller every row is written for.
    seller           text,
    submitted_by     text not null,
    rows_total       bigint not null default 0,
    rows_done        bigint not null default 0,
    rows_failed      bigint not null default 0,
    -- catalog-import: the last line whose command JetStream has stored (every row up to
    -- it is done); the job resumes after it.
    checkpoint       bigint not null default 0,
    cancel_requested boolean not null default false,
    -- Why a job failed.
    error            text,
    created_at       timestamptz not null default now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz not null default now()
);
create index jobs_by_tenant on jobs (tenant, created_at desc);

-- The valid rows of an import, stored at submission so that a worker on any host can
-- run (and resume) the job.
create table job_rows (
    job_id uuid   not null references jobs (id) on delete cascade,
    line   bigint not null,
    sku    text   not null,
    fields jsonb  not null,
    primary key (job_id, line)
);

-- Rows refused at submission (line number and reason); the others go on.
create table job_errors (
    job_id uuid   not null references jobs (id) on delete cascade,
    line   bigint not null,
    reason text   not null,
    primary key (job_id, line)
);
