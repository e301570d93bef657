-- The parameters a `request_id` was first used with (tag ids as a sorted set, the filename as
-- the caller sent it, the CSV options), so that the key reused with other parameters is refused
-- instead of silently returning an export of something else. NULL for an export made without a
-- key. An export made under a key before this column existed has NULL too and keeps the old
-- rule: the key returns it whatever the parameters.
ALTER TABLE exports ADD COLUMN request jsonb;
