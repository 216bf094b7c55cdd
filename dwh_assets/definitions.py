"""The Dagster code location (``workspace.yaml``, ``dagster ... -m dwh_assets.definitions``).

Everything is derived from the catalog by ``dwh_assets/warehouse/defs``. It needs only the
environment: ``DWH_WAREHOUSE_DSN`` (the loader's libpq DSN, a passfile rather than a
password) and ``DWH_HISTORY_START`` (the first day of history, where partitions start).
"""

from dwh_assets.warehouse.defs import build_definitions
from dwh_assets.warehouse.defs.partitions import history_start

defs = build_definitions(history_start())
