-- kubechat-audit migration 0001: the audit schema.
--
-- audit_events is a projection of the log (the log and the sealed archives are the source of
-- truth). Every stored field of a record is a column, so that `kubechat-audit verify
-- --postgres-url` can recompute each row's checksum from the row alone. Rows are insert-only:
-- triggers refuse UPDATE, DELETE and TRUNCATE. The table is partitioned by month of
-- received_at (the pipeline's trusted receive time), so that retention drops whole partitions.

CREATE SCHEMA IF NOT EXISTS kubechat_audit;

CREATE TABLE kubechat_audit.audit_events (
    chain_id            text        NOT NULL,
    seq                 bigint      NOT NULL CHECK (seq >= 1),
    event_id            uuid        NOT NULL,
    session_id          uuid,
    user_id             text        NOT NULL,
    event_type          text        NOT NULL CHECK (event_type IN ('command_execution', 'auth_event', 'system_event')),
    action              text        NOT NULL,
    kubernetes_command  text,
    success             boolean     NOT NULL,
    -- The producer's time, for queries; timestamp_text is the producer's exact RFC 3339 text
    -- (offset included), which is what the chain covers.
    "timestamp"         timestamptz NOT NULL,
    timestamp_text      text        NOT NULL,
    ip_address          inet,
    user_agent          text,
    metadata            jsonb,
    -- The pipeline's receive time; received_at_unix_ns is the exact value the chain covers.
    received_at         timestamptz NOT NULL,
    received_at_unix_ns bigint      NOT NULL,
    source_transport    text        NOT NULL,
    source_peer         text        NOT NULL,
    classification      text        NOT NULL CHECK (classification IN ('security', 'compliance', 'system')),
    retention_class     text        NOT NULL CHECK (retention_class IN ('security_7y', 'compliance_10y')),
    key_id              text        NOT NULL,
    prev_checksum       text        NOT NULL CHECK (prev_checksum ~ '^[0-9a-f]{64}$'),
    checksum            text        NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    PRIMARY KEY (chain_id, seq, received_at)
) PARTITION BY RANGE (received_at);

CREATE TABLE kubechat_audit.audit_events_default PARTITION OF kubechat_audit.audit_events DEFAULT;

-- The customer's indexes (audit queries, compliance reporting, session audit trail) and the
-- ones the query API pages by.
CREATE INDEX audit_events_user_time ON kubechat_audit.audit_events (user_id, "timestamp");
CREATE INDEX audit_events_type_time ON kubechat_audit.audit_events (event_type, "timestamp");
CREATE INDEX audit_events_session ON kubechat_audit.audit_events (session_id);
CREATE INDEX audit_events_user_seq ON kubechat_audit.audit_events (user_id, chain_id, seq);
CREATE INDEX audit_events_type_seq ON kubechat_audit.audit_events (event_type, chain_id, seq);
CREATE INDEX audit_events_session_seq ON kubechat_audit.audit_events (session_id, chain_id, seq) WHERE session_id IS NOT NULL;
-- Time-range queries find their seq band through this index (see the query API).
CREATE INDEX audit_events_chain_time ON kubechat_audit.audit_events (chain_id, "timestamp", seq);
CREATE INDEX audit_events_event_id ON kubechat_audit.audit_events (event_id);

-- Where each projection of each chain has got to. Updated in the same transaction as the
-- rows it accounts for, so a crash never duplicates or skips.
CREATE TABLE kubechat_audit.projection_offsets (
    chain_id   text        NOT NULL,
    projection text        NOT NULL,
    seq        bigint      NOT NULL CHECK (seq >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, projection)
);

-- Views by compliance classification (the customer's security_logs, compliance_events and
-- system_activities tables).
CREATE VIEW kubechat_audit.security_logs AS
    SELECT * FROM kubechat_audit.audit_events WHERE classification = 'security';
CREATE VIEW kubechat_audit.compliance_events AS
    SELECT * FROM kubechat_audit.audit_events WHERE classification = 'compliance';
CREATE VIEW kubechat_audit.system_activities AS
    SELECT * FROM kubechat_audit.audit_events WHERE classification = 'system';

-- Immutability. Row triggers on the partitioned table reach every partition; TRUNCATE
-- triggers are per table, so ensure_partitions() adds one to each partition it creates.
CREATE FUNCTION kubechat_audit.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'kubechat-audit: % on %.% is not allowed: audit records are insert-only',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON kubechat_audit.audit_events
    FOR EACH ROW EXECUTE FUNCTION kubechat_audit.refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON kubechat_audit.audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION kubechat_audit.refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON kubechat_audit.audit_events_default
    FOR EACH STATEMENT EXECUTE FUNCTION kubechat_audit.refuse_change();

-- Monthly partitions from `months_back` before this month to `months_ahead` after it. Runs
-- with its owner's rights so that the writer role can keep partitions ahead of time.
CREATE FUNCTION kubechat_audit.ensure_partitions(months_back int, months_ahead int) RETURNS int
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, kubechat_audit AS $$
DECLARE
    m date;
    name text;
    created int := 0;
BEGIN
    FOR i IN -months_back..months_ahead LOOP
        m := (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => i))::date;
        name := format('audit_events_%s', to_char(m, 'YYYY_MM'));
        IF to_regclass(format('kubechat_audit.%I', name)) IS NULL THEN
            -- A month that already has rows in the default partition cannot be split off;
            -- those rows stay where they are, and the month keeps using the default.
            IF EXISTS (SELECT 1 FROM kubechat_audit.audit_events_default
                       WHERE received_at >= (m::timestamp AT TIME ZONE 'UTC')
                         AND received_at < ((m + interval '1 month')::timestamp AT TIME ZONE 'UTC')) THEN
                CONTINUE;
            END IF;
            EXECUTE format('CREATE TABLE kubechat_audit.%I PARTITION OF kubechat_audit.audit_events
                            FOR VALUES FROM (%L) TO (%L)', name,
                           m::timestamp AT TIME ZONE 'UTC', (m + interval '1 month')::timestamp AT TIME ZONE 'UTC');
            EXECUTE format('CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON kubechat_audit.%I
                            FOR EACH STATEMENT EXECUTE FUNCTION kubechat_audit.refuse_change()', name);
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;

SELECT kubechat_audit.ensure_partitions(1, 3);
