-- Ferry vault state, version 1.
-- Times are milliseconds since the Unix epoch (UTC); bodies are JSON documents of ferry-types.

CREATE TABLE vaults (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    signing_secret TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);

-- Every configuration resource of a vault (fabrics, policies, mappings, protected items, ...).
CREATE TABLE docs (
    kind TEXT NOT NULL,
    vault TEXT NOT NULL,
    id TEXT NOT NULL,
    parent TEXT,
    unique_name TEXT,
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, vault, id)
);
CREATE UNIQUE INDEX docs_unique_name ON docs (kind, vault, unique_name);
CREATE INDEX docs_parent ON docs (kind, vault, parent, id);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    fabric TEXT,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);

CREATE TABLE registration_keys (
    id TEXT PRIMARY KEY,
    vault TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    issued_ms INTEGER NOT NULL,
    used_ms INTEGER,
    used_by_fabric TEXT,
    revoked_ms INTEGER
);
CREATE INDEX registration_keys_vault ON registration_keys (vault, issued_ms);

CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    vault TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    fabric TEXT,
    object_type TEXT NOT NULL,
    object_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX jobs_vault ON jobs (vault, seq);
CREATE INDEX jobs_vault_status ON jobs (vault, status, seq);
CREATE INDEX jobs_vault_fabric ON jobs (vault, fabric, seq);
CREATE INDEX jobs_vault_object ON jobs (vault, object_type, object_id, seq);
CREATE INDEX jobs_vault_created ON jobs (vault, created_ms);
CREATE INDEX jobs_open ON jobs (status) WHERE status IN ('NotStarted', 'InProgress', 'WaitingForInput');

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vault TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    severity TEXT NOT NULL,
    kind TEXT NOT NULL,
    fabric TEXT,
    object_id TEXT,
    body TEXT NOT NULL
);
CREATE INDEX events_vault ON events (vault, id);
CREATE INDEX events_vault_severity ON events (vault, severity, id);
CREATE INDEX events_vault_fabric ON events (vault, fabric, id);

-- Commands from the vault to a site, fetched by the site over its outbound connection.
CREATE TABLE site_commands (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    vault TEXT NOT NULL,
    fabric TEXT NOT NULL,
    job TEXT,
    body TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    delivered_ms INTEGER,
    done_ms INTEGER,
    result TEXT
);
CREATE INDEX site_commands_pending ON site_commands (fabric, done_ms, seq);
