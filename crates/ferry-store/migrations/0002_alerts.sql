-- Alerts (JOB-4): the durable outbox of alerts to deliver, one row per alert and channel.
-- A row is written in the same transaction as the event that raised the alert, delivered by
-- the vault's background task with retries, and kept as a record once delivered or dropped.
CREATE TABLE alert_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL,
    vault TEXT NOT NULL,
    -- 'email' or 'webhook:<url>'
    channel TEXT NOT NULL,
    -- the alert as JSON (ferry-types Alert)
    body TEXT NOT NULL,
    raised_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL,
    last_error TEXT,
    delivered_ms INTEGER,
    dropped_ms INTEGER,
    UNIQUE (alert_id, channel)
);
CREATE INDEX alert_outbox_due ON alert_outbox (next_ms) WHERE delivered_ms IS NULL AND dropped_ms IS NULL;
CREATE INDEX alert_outbox_vault ON alert_outbox (vault, seq);
