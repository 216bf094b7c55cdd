"""The Dagster code location: everything is derived from the catalog in defs/."""

import dagster as dg

defs = dg.Definitions()
