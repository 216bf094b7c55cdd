"""The Dagster code location (``workspace.yaml``, ``dagster ... -m dwh_assets.definitions``,
``dagster api grpc -m dwh_assets.definitions``).

Loaded lazily (``@dg.definitions``): importing this module builds nothing and reads no
setting; Dagster calls ``defs`` when it loads the code location, which reads the settings
(``dwh_assets/warehouse/defs/settings.py``: ``DWH_WAREHOUSE_DSN`` and ``DWH_HISTORY_START``
are required) and derives everything else from the catalog. A missing or malformed setting
fails the load with one error that names each.
"""

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    # Imported when Dagster loads the location: importing this module costs only Dagster's own import.
    from dwh_assets.warehouse.defs import CodeLocationSettings, build_definitions

    return build_definitions(CodeLocationSettings.from_environment())
