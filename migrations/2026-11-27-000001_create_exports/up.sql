-- Contact Export's own tables. The CRM's tables (workspaces, users, contacts, tags,
-- contact_tags) are the CRM's: these migrations never create or alter them.

-- An export: the caller's request and the durable job that runs it.
CREATE TABLE exports (
    id               uuid PRIMARY KEY,
    workspace_id     uuid        NOT NULL,
    user_id          uuid        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled', 'expired')),
    filename         text        NOT NULL,
    tag_ids          uuid[]      NOT NULL DEFAULT '{}',
    options          jsonb       NOT NULL DEFAULT '{}',
    request_id       text,
    total_rows       bigint      NOT NULL DEFAULT 0,
    processed_rows   bigint      NOT NULL DEFAULT 0,
    current_step     text        NOT NULL DEFAULT '',
    attempt          integer     NOT NULL DEFAULT 0,
    error_message    text,
    storage_key      text,
    size_bytes       bigint,
    sha256           text,
    -- The job: false until every step has run (the notification runs after COMPLETED).
    job_done         boolean     NOT NULL DEFAULT false,
    cancel_requested boolean     NOT NULL DEFAULT false,
    lease_owner      text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);

CREATE UNIQUE INDEX exports_workspace_request_id ON exports (workspace_id, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX exports_workspace_newest ON exports (workspace_id, created_at DESC, id DESC);
CREATE INDEX exports_open_jobs ON exports (created_at) WHERE NOT job_done;

-- One row per export and pipeline step: a succeeded step's output is reused, never recomputed
-- (but for the snapshot-bound metadata, see the pipeline).
CREATE TABLE export_steps (
    export_id   uuid        NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    step        text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'skipped')),
    attempts    integer     NOT NULL DEFAULT 0,
    output      jsonb,
    error       text,
    worker      text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (export_id, step)
);

-- API tokens; only a SHA-256 of the secret is kept.
CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    token_sha256 text        NOT NULL UNIQUE,
    workspace_id uuid        NOT NULL,
    user_id      uuid        NOT NULL,
    name         text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz
);

-- Watchers and idle workers learn of changes through NOTIFY, on every replica at once.
CREATE FUNCTION exports_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('export_changed', NEW.id::text);
    -- Queued: inserted, or released by a worker that stopped (so another takes it at once).
    IF NOT NEW.job_done AND NEW.lease_owner IS NULL
       AND (TG_OP = 'INSERT' OR OLD.lease_owner IS NOT NULL) THEN
        PERFORM pg_notify('export_queued', NEW.id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER exports_notify AFTER INSERT OR UPDATE ON exports
    FOR EACH ROW EXECUTE FUNCTION exports_notify();
