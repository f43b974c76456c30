-- The key-value store (sidecar/src/services/kv/postgres.rs).
--
-- Keys are bytea, so they sort in byte order (as redb's do, and as the
-- cursors assume) and may hold any UTF-8 text, NUL included. Plugin and
-- bucket names are 1-64 of a-z0-9_- (checked by the sidecar); COLLATE "C"
-- keeps their comparisons bytewise too.
CREATE TABLE gatehouse_kv_data (
    plugin text COLLATE "C" NOT NULL,
    bucket text COLLATE "C" NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (plugin, bucket, key)
);

-- What a plugin's quotas count, over all its buckets: keys, and bytes of
-- keys plus values. Every write locks its plugin's row (FOR UPDATE, through
-- an upsert) before it reads anything, and changes it in the same
-- transaction as the data, so quotas hold across sidecar processes and the
-- counts always equal a full scan.
CREATE TABLE gatehouse_kv_plugin_usage (
    plugin text COLLATE "C" PRIMARY KEY,
    keys bigint NOT NULL DEFAULT 0 CHECK (keys >= 0),
    bytes bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0)
);

-- The same counts per bucket (for usage reports), changed under the
-- plugin's lock by an upsert of the change. (No CHECK (>= 0) here:
-- PostgreSQL checks the row an upsert proposes, which holds the change,
-- before it finds the row to update.)
CREATE TABLE gatehouse_kv_bucket_usage (
    plugin text COLLATE "C" NOT NULL,
    bucket text COLLATE "C" NOT NULL,
    keys bigint NOT NULL,
    bytes bigint NOT NULL,
    PRIMARY KEY (plugin, bucket)
);
