-- Warehouse health: the mart days the quality gate holds back (a copy they read failed a
-- blocking check), with the reason; empty while every copy passes (03_quality_gate.sql).
CREATE OR REPLACE VIEW mart.held_mart_days AS
SELECT p.mart,
       p.day,
       p.held_since,
       round((extract(epoch FROM now() - p.held_since) / 60)::numeric, 1) AS minutes_held,
       p.held_reason
FROM dwh.mart_pending p
WHERE p.held_reason IS NOT NULL;
