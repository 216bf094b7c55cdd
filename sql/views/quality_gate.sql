-- Warehouse health: each mart's queue and what the quality gate holds back (a copy it reads
-- failed a blocking check; 03_quality_gate.sql), with the reason. One row per mart, so the
-- dashboard shows "0 held" rather than nothing while every copy passes.
CREATE OR REPLACE VIEW mart.quality_gate AS
SELECT m.mart,
       count(p.day)::bigint AS queued_days,
       count(p.day) FILTER (WHERE p.held_reason IS NOT NULL)::bigint AS held_days,
       coalesce(string_agg(p.day::text, ', ' ORDER BY p.day) FILTER (WHERE p.held_reason IS NOT NULL), '') AS held,
       min(p.held_since) AS held_since,
       coalesce(min(p.held_reason), '') AS held_reason
FROM (SELECT DISTINCT mart FROM dwh.mart_inputs) m
LEFT JOIN dwh.mart_pending p USING (mart)
GROUP BY m.mart;
