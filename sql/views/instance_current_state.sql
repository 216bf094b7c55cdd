-- Fleet, today: every instance with its owner (name and plan, for the dashboards' filters),
-- region, size and latest state (from the state history; ''deleted'' once deleted_at has passed,
-- ''unknown'' without any transition in the retained history).
CREATE OR REPLACE VIEW mart.instance_current_state AS
SELECT i.instance_id,
       i.organization_id,
       o.name AS organization_name,
       o.plan,
       i.region,
       i.cpu,
       i.memory_gb,
       format('%s vCPU / %s GB', i.cpu, i.memory_gb) AS size,
       CASE WHEN i.deleted_at IS NOT NULL AND i.deleted_at <= now() THEN 'deleted'
            ELSE coalesce(s.state, 'unknown') END AS state,
       s.changed_at AS state_since
FROM dwh.instances i
LEFT JOIN dwh.organizations o USING (organization_id)
LEFT JOIN LATERAL (
    SELECT st.state, st.changed_at
    FROM dwh.instance_state st
    WHERE st.instance_id = i.instance_id
    ORDER BY st.changed_at DESC, st.id DESC
    LIMIT 1
) s ON true;
