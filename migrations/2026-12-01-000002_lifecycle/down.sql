ALTER TABLE exports DROP COLUMN webhook_due;
ALTER TABLE exports DROP COLUMN notify_url;
DROP INDEX exports_completed_finished;
ALTER TABLE exports DROP COLUMN expires_at;
ALTER TABLE exports DROP COLUMN deleted_at;
UPDATE exports SET status = 'expired' WHERE status = 'deleted';
ALTER TABLE exports DROP CONSTRAINT exports_status_check;
ALTER TABLE exports ADD CONSTRAINT exports_status_check CHECK (status IN
    ('pending', 'processing', 'completed', 'failed', 'cancelled', 'expired'));
