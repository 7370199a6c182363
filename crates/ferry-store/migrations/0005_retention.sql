-- Retention (SEC-3): old events, ended jobs, answered site commands and finished alert rows
-- are pruned by age; these indexes let the pruning find them without scanning each table.
CREATE INDEX events_time ON events (time_ms);
CREATE INDEX jobs_created ON jobs (created_ms);
CREATE INDEX site_commands_created ON site_commands (created_ms);
CREATE INDEX alert_outbox_raised ON alert_outbox (raised_ms);
