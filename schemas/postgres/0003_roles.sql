-- kubechat-audit migration 0003: roles.
--
-- kubechat_audit_writer: what the projection needs. INSERT on the audit tables (no UPDATE,
-- DELETE or TRUNCATE), INSERT and UPDATE on the offsets and the session summaries.
-- kubechat_audit_reader: SELECT on everything, for queries and compliance reports.
-- Both are NOLOGIN groups: grant them to login roles (GRANT kubechat_audit_writer TO svc).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kubechat_audit_writer') THEN
        CREATE ROLE kubechat_audit_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kubechat_audit_reader') THEN
        CREATE ROLE kubechat_audit_reader NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA kubechat_audit, kubechat_operational TO kubechat_audit_writer, kubechat_audit_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA kubechat_audit, kubechat_operational TO kubechat_audit_reader;
GRANT SELECT, INSERT ON kubechat_audit.audit_events, kubechat_operational.command_history TO kubechat_audit_writer;
GRANT SELECT, INSERT, UPDATE ON kubechat_audit.projection_offsets, kubechat_operational.chat_sessions TO kubechat_audit_writer;
GRANT SELECT ON kubechat_audit.schema_migrations TO kubechat_audit_writer, kubechat_audit_reader;
GRANT SELECT ON kubechat_audit.security_logs, kubechat_audit.compliance_events, kubechat_audit.system_activities TO kubechat_audit_writer;
GRANT EXECUTE ON FUNCTION kubechat_audit.ensure_partitions(int, int) TO kubechat_audit_writer;
REVOKE EXECUTE ON FUNCTION kubechat_audit.ensure_partitions(int, int) FROM PUBLIC;
