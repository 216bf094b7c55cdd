-- Warehouse health: late data. Per fact, how its scheduled refresh follows late rows (the
-- arrival watermark) and what the latest daily reconciliation with the source found.
CREATE OR REPLACE VIEW mart.late_data AS
SELECT w.table_name,
       w.arrival_column,
       w.seen_up_to,
       w.late_days_replaced,
       w.last_late_day,
       w.late_days_too_old,
       w.last_too_old_day,
       r.finished_at AS reconciled_at,
       r.days_compared,
       cardinality(r.differing_days) AS differing_days,
       cardinality(r.repaired_days) AS repaired_days,
       cardinality(r.kept_days) AS kept_days,
       array_to_string(r.repaired_days, ', ') AS repaired,
       r.error
FROM dwh.arrival_watermarks w
LEFT JOIN LATERAL (
    SELECT * FROM dwh.reconciliation r WHERE r.table_name = w.table_name ORDER BY r.finished_at DESC LIMIT 1
) r ON true;
