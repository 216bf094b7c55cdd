"""The Dagster code location (``workspace.yaml``, ``dagster ... -m dwh_assets.definitions``).

Everything is derived from the catalog in ``dwh_assets/defs``; the partitions start on the
first day of source history, which the stack exports as ``DWH_HISTORY_START``.
"""

from dwh_assets.defs import build_definitions
from dwh_assets.defs.partitions import history_start

defs = build_definitions(history_start())
