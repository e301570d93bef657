-- Every CreateExport counts the workspace's queued and running exports against its quota; this
-- keeps that count to the few open rows however many finished exports the workspace has. The
-- query must spell the predicate the same way (literal statuses) for the planner to use it.
CREATE INDEX exports_workspace_queued ON exports (workspace_id)
    WHERE status IN ('pending', 'processing');
