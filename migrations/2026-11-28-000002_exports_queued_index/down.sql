DROP INDEX exports_workspace_queued;
