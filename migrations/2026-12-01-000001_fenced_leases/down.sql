DROP INDEX exports_unswept;
DROP INDEX exports_workspace_leased;
ALTER TABLE export_steps DROP COLUMN failures;
ALTER TABLE exports DROP COLUMN needs_mailer;
ALTER TABLE exports DROP COLUMN objects_swept;
ALTER TABLE exports DROP COLUMN lease_generation;
