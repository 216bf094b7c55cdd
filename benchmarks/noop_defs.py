"""B5's floor: one asset that does nothing, materialised by the same CLI against the same instance."""

import dagster as dg


@dg.asset
def noop() -> dg.MaterializeResult:
    return dg.MaterializeResult()


defs = dg.Definitions(assets=[noop], executor=dg.in_process_executor)
