-- depends: 0007.comments
-- Per UTC day and state: how many instances entered it, and how many distinct instances did
-- (the fleet dashboard's "state transitions per day"). Incremental like the other marts.
CREATE TABLE mart.instance_state_daily_days (
    day         date   NOT NULL,
    state       text   NOT NULL,
    transitions bigint NOT NULL,
    instances   bigint NOT NULL,
    PRIMARY KEY (day, state)
) PARTITION BY RANGE (day);

CREATE VIEW mart.instance_state_daily AS
SELECT day, state, transitions, instances FROM mart.instance_state_daily_days;

DO $$
BEGIN
    PERFORM dwh.partman_create_daily('mart.instance_state_daily_days', 'day', current_date - 90);
END
$$;

COMMENT ON TABLE mart.instance_state_daily_days IS 'Per UTC day and state: transitions into the state, partitioned by day.';
COMMENT ON COLUMN mart.instance_state_daily_days.day IS 'The UTC day (the partition key).';
COMMENT ON COLUMN mart.instance_state_daily_days.state IS 'The state entered (creating, running, stopping, stopped, starting, deleted).';
COMMENT ON COLUMN mart.instance_state_daily_days.transitions IS 'State changes into it that day.';
COMMENT ON COLUMN mart.instance_state_daily_days.instances IS 'Distinct instances that entered it that day.';
COMMENT ON VIEW mart.instance_state_daily IS 'Per UTC day and state: transitions into the state and the instances that made them.';
COMMENT ON COLUMN mart.instance_state_daily.day IS 'The UTC day.';
COMMENT ON COLUMN mart.instance_state_daily.state IS 'The state entered.';
COMMENT ON COLUMN mart.instance_state_daily.transitions IS 'State changes into it that day.';
COMMENT ON COLUMN mart.instance_state_daily.instances IS 'Distinct instances that entered it that day.';
