ALTER TABLE exports DROP COLUMN request;
