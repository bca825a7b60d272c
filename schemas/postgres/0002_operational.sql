-- kubechat-audit migration 0002: operational projections derived from audit events.
--
-- Both tables are rebuilt by `kubechat-audit replay`. Their values do not depend on how the
-- events were batched: every column is an aggregate (min, max, count, or "the value of the
-- latest event"), so live ingestion and replay produce identical rows.

CREATE SCHEMA IF NOT EXISTS kubechat_operational;

-- One row per KubeChat session seen in any chain's events.
CREATE TABLE kubechat_operational.chat_sessions (
    session_id         uuid        PRIMARY KEY,
    -- The user of the session's earliest event.
    user_id            text        NOT NULL,
    -- metadata.kubernetes_context of the session's latest event that carried one.
    kubernetes_context text,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    -- 'completed' once an event with action 'logout' or 'session_end' is seen; otherwise
    -- 'active'. Expiry is a matter of updated_at and the operator's policy.
    status             text        NOT NULL CHECK (status IN ('active', 'completed')),
    event_count        bigint      NOT NULL,
    -- Tie-breakers that make "earliest" and "latest" independent of arrival order.
    first_event        text        NOT NULL,
    context_event      text
);
CREATE INDEX chat_sessions_user_created ON kubechat_operational.chat_sessions (user_id, created_at);
CREATE INDEX chat_sessions_status_updated ON kubechat_operational.chat_sessions (status, updated_at);

-- Every command_execution event.
CREATE TABLE kubechat_operational.command_history (
    chain_id           text        NOT NULL,
    seq                bigint      NOT NULL,
    event_id           uuid        NOT NULL,
    session_id         uuid,
    user_id            text        NOT NULL,
    kubernetes_command text        NOT NULL,
    kubernetes_context text,
    success            boolean     NOT NULL,
    "timestamp"        timestamptz NOT NULL,
    PRIMARY KEY (chain_id, seq)
);
CREATE INDEX command_history_user_time ON kubechat_operational.command_history (user_id, "timestamp");
CREATE INDEX command_history_session ON kubechat_operational.command_history (session_id);

CREATE TRIGGER command_history_no_update BEFORE UPDATE OR DELETE ON kubechat_operational.command_history
    FOR EACH ROW EXECUTE FUNCTION kubechat_audit.refuse_change();
CREATE TRIGGER command_history_no_truncate BEFORE TRUNCATE ON kubechat_operational.command_history
    FOR EACH STATEMENT EXECUTE FUNCTION kubechat_audit.refuse_change();
