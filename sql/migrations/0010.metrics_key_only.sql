-- depends: 0009.arrival_watermarks
-- dwh.metrics keeps its key (series_id, ts) and loses its index on ts alone. What reads the
-- table asks for whole UTC days (the marts, the completeness check, the refreshes' deletes),
-- which its daily partitions already narrow a scan to, so the index served no query; yet it
-- was nearly half of what the server spent inserting a sample (benchmarks/README.md, B8). The catalog no longer
-- declares it, so a new warehouse never has it; this drops it from one created before.
-- A query of part of a day scans that day's partition.
DROP INDEX IF EXISTS dwh.metrics_ts_idx;
