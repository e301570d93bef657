-- Every claim of a job increments its generation: the fencing token that each write of the
-- running job checks (a worker whose lease was taken over can no longer change the export),
-- and part of the key of the object its attempt writes (no attempt writes where another's is).
ALTER TABLE exports ADD COLUMN lease_generation bigint NOT NULL DEFAULT 0;

-- Whether the objects of attempts that did not win (abandoned, failed, fenced out) are gone.
-- Rows of earlier versions wrote one key per export: nothing to sweep.
ALTER TABLE exports ADD COLUMN objects_swept boolean NOT NULL DEFAULT true;
ALTER TABLE exports ALTER COLUMN objects_swept SET DEFAULT false;

-- The file is written and the requester wants mail, but the replica that ran the job has no
-- mail transport: only a replica that has one claims the job now.
ALTER TABLE exports ADD COLUMN needs_mailer boolean NOT NULL DEFAULT false;

-- Failed attempts of a step. A lease handed back (shutdown) or lost (a stalled worker) is not
-- a failure: the cap on attempts counts only these.
ALTER TABLE export_steps ADD COLUMN failures integer NOT NULL DEFAULT 0;

-- Running jobs per workspace, for the fair share of workers across replicas.
CREATE INDEX exports_workspace_leased ON exports (workspace_id)
    WHERE NOT job_done AND lease_owner IS NOT NULL;
-- Finished jobs whose stray objects are still to sweep.
CREATE INDEX exports_unswept ON exports (finished_at) WHERE job_done AND NOT objects_swept;
