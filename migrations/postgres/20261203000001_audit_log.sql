-- The audit log, shared by the sidecars pointed at this database
-- (sidecar/src/audit/postgres.rs; the format is docs/audit-log.md).
--
-- One log per database. Entries, nodes and checkpoints are only ever
-- inserted; the head row is what appends lock and advance by
-- compare-and-swap, so appends from several processes never fork the log.
CREATE TABLE gatehouse_audit_entries (
    seq bigint PRIMARY KEY CHECK (seq >= 0),
    entry bytea NOT NULL
);

-- Every complete subtree's hash (level 0: the leaf hashes), written when
-- its last leaf is appended.
CREATE TABLE gatehouse_audit_nodes (
    level smallint NOT NULL CHECK (level >= 0 AND level < 64),
    index bigint NOT NULL CHECK (index >= 0),
    hash bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, index)
);

-- The signed checkpoint of each appended batch, by tree size.
CREATE TABLE gatehouse_audit_checkpoints (
    size bigint PRIMARY KEY CHECK (size > 0),
    note text NOT NULL
);

-- The grants in force (and the approval rows), as the entries left them;
-- signed in each checkpoint by digest.
CREATE TABLE gatehouse_audit_grants (
    plugin text COLLATE "C" PRIMARY KEY,
    grants bytea NOT NULL
);

-- The tree size appends start from: one row.
CREATE TABLE gatehouse_audit_head (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    size bigint NOT NULL CHECK (size >= 0)
);
INSERT INTO gatehouse_audit_head (size) VALUES (0);
