"""The local demo stack: everything `dwh up` starts on this machine to try the warehouse.

A PostgreSQL 15 cluster (warehouse, control plane and Dagster databases), the Clerk API
emulator, the data generator and control-plane seeding, the usage exporter and Prometheus
with its back-filled history, Dagster's webserver and daemon. It writes a deployment
configuration for its own servers (``config.StackConfig.deployment``) and calls the same
``warehouse.migrate`` a real deployment calls. It imports the warehouse, never the reverse.
"""
