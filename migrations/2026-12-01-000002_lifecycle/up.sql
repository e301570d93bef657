-- Retention, deletion and webhooks.

-- DeleteExport keeps the row (status 'deleted') and removes its file.
ALTER TABLE exports DROP CONSTRAINT exports_status_check;
ALTER TABLE exports ADD CONSTRAINT exports_status_check CHECK (status IN
    ('pending', 'processing', 'completed', 'failed', 'cancelled', 'expired', 'deleted'));
ALTER TABLE exports ADD COLUMN deleted_at timestamptz;

-- When retention removes the file of a COMPLETED export. Rows completed before this column
-- existed have none: the janitor counts from their finished_at.
ALTER TABLE exports ADD COLUMN expires_at timestamptz;
CREATE INDEX exports_completed_finished ON exports (finished_at) WHERE status = 'completed';

-- The caller's webhook (validated against the operator's allow list when created), and the
-- end it is still to be told of ('completed', 'failed', 'cancelled', 'expired'): while one is
-- due the job is not done, and only a replica that can send webhooks claims it.
ALTER TABLE exports ADD COLUMN notify_url text;
ALTER TABLE exports ADD COLUMN webhook_due text;
