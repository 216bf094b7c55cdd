"""The dashboards as code: Superset's own export format (YAML), kept in the package.

``dwh_assets/warehouse/dashboards/`` is package data (found through ``importlib.resources``,
so an installed wheel has it too): an unzipped Superset export without its root folder::

    dashboards/
      metadata.yaml                      version, type: Dashboard
      databases/<name>.yaml              the warehouse connection (no password: a passfile)
      datasets/<database>/<name>.yaml    one per relation a chart reads (schema + table_name)
      charts/<name>.yaml                 a chart: its dataset_uuid and form data (params)
      dashboards/<name>.yaml             title, slug, layout (position) naming its charts' uuids

``load_bundle`` parses and checks it (every file valid YAML with the keys Superset needs,
every uuid once, every reference resolvable) and says which file is wrong. The local stack
imports the bundle into Superset (``dwh_assets/local/superset.py``); the Dagster code
location derives one external asset per dashboard from it (``defs/dashboard_assets.py``),
downstream of the relations its charts' datasets read. Only the standard library and PyYAML.
"""

from __future__ import annotations

import uuid as uuid_lib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import yaml

from dwh_assets.warehouse.errors import DwhError

# libyaml's safe loader where PyYAML was built with it (about 10x faster: the code location
# parses every dashboard file each time it loads), the pure-Python one otherwise.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Installed packages are directories on disk (pip never installs this one zipped).
PACKAGED_DASHBOARDS = Path(str(files("dwh_assets.warehouse") / "dashboards"))

# What Superset's importer needs of each kind of file (its ImportV1*Schema's required fields).
REQUIRED = {
    "databases": ("database_name", "sqlalchemy_uri", "uuid", "version"),
    "datasets": ("table_name", "database_uuid", "uuid", "version"),
    "charts": ("slice_name", "viz_type", "dataset_uuid", "uuid", "version"),
    "dashboards": ("dashboard_title", "uuid", "version", "position"),
}


class BundleError(DwhError):
    """A file of the dashboards directory is broken; the message names it."""


@dataclass(frozen=True)
class Database:
    path: Path
    uuid: str
    name: str
    sqlalchemy_uri: str


@dataclass(frozen=True)
class Dataset:
    path: Path
    uuid: str
    schema: str | None
    table_name: str
    database_uuid: str
    sql: str | None

    @property
    def relation(self) -> str:
        return f"{self.schema}.{self.table_name}" if self.schema else self.table_name


@dataclass(frozen=True)
class Chart:
    path: Path
    uuid: str
    name: str
    viz_type: str
    dataset_uuid: str
    description: str | None = None
    params: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Dashboard:
    path: Path
    uuid: str
    title: str
    slug: str | None
    description: str | None
    chart_uuids: tuple[str, ...]

    @property
    def url_path(self) -> str:
        return f"/superset/dashboard/{self.slug}/" if self.slug else f"/superset/dashboard/{self.uuid}/"


@dataclass
class Bundle:
    root: Path
    files: dict[str, str] = field(default_factory=dict)  # path relative to root -> YAML text
    databases: dict[str, Database] = field(default_factory=dict)
    datasets: dict[str, Dataset] = field(default_factory=dict)
    charts: dict[str, Chart] = field(default_factory=dict)
    dashboards: dict[str, Dashboard] = field(default_factory=dict)

    def dashboard_relations(self, dashboard: Dashboard) -> list[str]:
        """The relations (schema.table) the dashboard's charts read, in a stable order."""
        seen: dict[str, None] = {}
        for chart_uuid in dashboard.chart_uuids:
            seen[self.datasets[self.charts[chart_uuid].dataset_uuid].relation] = None
        return sorted(seen)

    def dashboard_charts(self, dashboard: Dashboard) -> list[Chart]:
        return [self.charts[u] for u in dashboard.chart_uuids]


def _read(root: Path, path: Path) -> dict:
    rel = path.relative_to(root)
    try:
        data = yaml.load(path.read_text(), Loader=_SAFE_LOADER)
    except yaml.YAMLError as e:
        raise BundleError(f"{rel}: not valid YAML: {' '.join(str(e).split())}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{rel}: cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{rel}: expected a mapping of Superset's export format, found {type(data).__name__}")
    kind = rel.parts[0]
    missing = [k for k in REQUIRED.get(kind, ()) if data.get(k) in (None, "")]
    if missing:
        raise BundleError(f"{rel}: missing {', '.join(missing)} (Superset's {kind[:-1]} format needs them)")
    if "uuid" in data:
        try:
            uuid_lib.UUID(str(data["uuid"]))
        except ValueError:
            raise BundleError(f"{rel}: uuid {data['uuid']!r} is not a UUID") from None
    return data


def _position_charts(rel: Path, position: object) -> tuple[str, ...]:
    if not isinstance(position, dict):
        raise BundleError(f"{rel}: position must be a mapping of layout components")
    charts = []
    for key, item in position.items():
        if isinstance(item, dict) and item.get("type") == "CHART":
            meta = item.get("meta") or {}
            chart_uuid = meta.get("uuid")
            if not chart_uuid or "chartId" not in meta:
                raise BundleError(f"{rel}: layout component {key} is a chart without meta.uuid and meta.chartId "
                                  f"(chartId may be 0: the import sets it from the uuid)")
            charts.append(str(chart_uuid))
    return tuple(dict.fromkeys(charts))


def load_bundle(root: Path | None = None) -> Bundle:
    """Parse and check a dashboards directory (default: the package's); ``BundleError`` names the first broken file."""
    root = (root or PACKAGED_DASHBOARDS).resolve()
    if not root.is_dir():
        raise BundleError(f"no dashboards directory at {root}")
    bundle = Bundle(root=root)
    seen_uuids: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(root)
        if path.suffix not in (".yaml", ".yml"):
            raise BundleError(f"{rel}: only YAML files belong in {root.name}/ (Superset's export format)")
        if rel.parts[0] not in REQUIRED and rel != Path("metadata.yaml"):
            raise BundleError(f"{rel}: unknown kind {rel.parts[0]!r}; expected one of {', '.join(REQUIRED)}")
        data = _read(root, path)
        bundle.files[str(rel)] = path.read_text()
        if rel == Path("metadata.yaml"):
            if data.get("type") != "Dashboard":
                raise BundleError(f"{rel}: type must be Dashboard (an export of dashboards), not {data.get('type')!r}")
            continue
        u = str(data["uuid"])
        if u in seen_uuids:
            raise BundleError(f"{rel}: uuid {u} is already used by {seen_uuids[u].relative_to(root)}")
        seen_uuids[u] = path
        kind = rel.parts[0]
        if kind == "databases":
            bundle.databases[u] = Database(path, u, str(data["database_name"]), str(data["sqlalchemy_uri"]))
        elif kind == "datasets":
            bundle.datasets[u] = Dataset(path, u, data.get("schema"), str(data["table_name"]),
                                         str(data["database_uuid"]), data.get("sql"))
        elif kind == "charts":
            params = data.get("params") if isinstance(data.get("params"), dict) else {}
            bundle.charts[u] = Chart(path, u, str(data["slice_name"]), str(data["viz_type"]), str(data["dataset_uuid"]),
                                     data.get("description"), params)
        else:
            bundle.dashboards[u] = Dashboard(path, u, str(data["dashboard_title"]), data.get("slug"),
                                             data.get("description"), _position_charts(rel, data["position"]))
    if "metadata.yaml" not in bundle.files:
        raise BundleError(f"{root}: no metadata.yaml (Superset's export format starts with it)")
    _check_references(bundle)
    return bundle


def _check_references(bundle: Bundle) -> None:
    def rel(p: Path) -> Path:
        return p.relative_to(bundle.root)

    for ds in bundle.datasets.values():
        if ds.database_uuid not in bundle.databases:
            raise BundleError(f"{rel(ds.path)}: database_uuid {ds.database_uuid} names no file in databases/")
        if ds.sql:
            raise BundleError(f"{rel(ds.path)}: a virtual (SQL) dataset hides its lineage; put the query in a "
                              f"view (sql/migrations) and point the dataset at it")
        if not ds.schema:
            raise BundleError(f"{rel(ds.path)}: schema is missing (datasets read mart.* or dwh.* relations)")
    for chart in bundle.charts.values():
        if chart.dataset_uuid not in bundle.datasets:
            raise BundleError(f"{rel(chart.path)}: dataset_uuid {chart.dataset_uuid} names no file in datasets/")
    slugs: dict[str, Path] = {}
    for dash in bundle.dashboards.values():
        for chart_uuid in dash.chart_uuids:
            if chart_uuid not in bundle.charts:
                raise BundleError(f"{rel(dash.path)}: the layout names chart {chart_uuid}, which no file in charts/ has")
        if not dash.chart_uuids:
            raise BundleError(f"{rel(dash.path)}: the dashboard has no chart")
        if dash.slug:
            if dash.slug in slugs:
                raise BundleError(f"{rel(dash.path)}: slug {dash.slug!r} is already used by {rel(slugs[dash.slug])}")
            slugs[dash.slug] = dash.path
