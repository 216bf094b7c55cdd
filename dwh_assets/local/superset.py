"""Apache Superset 6.1 in the local stack: its virtualenv, first start, webserver, dashboards.

- **Virtualenv.** Superset pins SQLAlchemy < 2 and an older pandas, so it cannot share
  ``.venv``: it lives in ``.venv-superset`` at the repository root (``DWH_SUPERSET_VENV``),
  shared by every stack and test run, installed by ``superset/install-venv.sh`` from the
  pinned ``superset/constraints.txt`` (by ``.ci/setup``, or by ``dwh up`` when missing).
- **Metadata** in the stack's Postgres (database and role ``superset``), reached over TCP
  with a password-less URI: libpq reads the password from ``secrets/superset.pgpass``, a
  passfile holding only Superset's two logins (``superset``, and ``dwh_reader`` for the
  warehouse connection). ``SECRET_KEY`` and the ``admin`` password are generated into 0600
  files at first start and read from those files (``superset/superset_config.py``,
  ``superset/ensure_admin.py``): never printed, never on a command line or in the environment.
- **First start** (once per metadata database and Superset version, remembered in
  ``<home>/superset/initialized``): ``superset db upgrade``, ``superset init``, the admin login.
- **Webserver**: gunicorn on 127.0.0.1 (``DWH_SUPERSET_PORT``, default 8088).
- **Dashboards as code**: ``import_dashboards`` checks the package's dashboards (``load_bundle``),
  points its database file at this stack's warehouse as ``dwh_reader`` and posts the bundle
  to Superset's import API with overwrite, kind by kind (``IMPORT_STEPS``), which upserts by
  uuid: re-importing changes what changed and duplicates nothing. A broken file stops the
  import before Superset sees anything. ``export_dashboards`` writes what is in Superset back to them (in a checkout).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from dwh_assets.local import secrets
from dwh_assets.local.config import (
    READER_ROLE,
    REPO_ROOT,
    SUPERSET_ADMIN,
    SUPERSET_DB,
    SUPERSET_ROLE,
    WAREHOUSE_DB,
    StackConfig,
    checkout_root,
)
from dwh_assets.local.process import ManagedProcess, StackError, tail
from dwh_assets.warehouse.catalog import PRODUCT
from dwh_assets.warehouse.superset_derived import (
    describe_chart,
    describe_dashboard,
    describe_dataset,
    exported_dashboard,
)
from dwh_assets.warehouse.superset_export import PACKAGED_DASHBOARDS, Bundle, BundleError, load_bundle

SUPERSET_VERSION = "6.1.0"
SUPERSET_FILES = REPO_ROOT / "superset"
CONFIG_FILE = SUPERSET_FILES / "superset_config.py"
INSTALL_SCRIPT = SUPERSET_FILES / "install-venv.sh"
VENV_ENV = "DWH_SUPERSET_VENV"
# gunicorn: 2 workers x 4 threads serve a dashboard's chart requests in parallel on 2 cores.
WORKERS, THREADS = 2, 4
START_TIMEOUT = 240
# The connection's URI inside the repository's database YAML; replaced by the stack's own at
# import and written back on export, so the files do not change with a stack's port.
CANONICAL_HOST_PORT = "127.0.0.1:55432"


def venv_dir() -> Path:
    return Path(os.environ.get(VENV_ENV) or REPO_ROOT / ".venv-superset")


def ensure_venv(progress=print) -> Path:
    """The Superset virtualenv; installed from the constraints file only when missing."""
    venv = venv_dir()
    if (venv / "bin" / "gunicorn").exists() and (venv / "bin" / "superset").exists():
        return venv
    progress(f"      installing Superset {SUPERSET_VERSION} into {venv} (once; a few minutes) ...")
    done = subprocess.run(["bash", str(INSTALL_SCRIPT), str(venv)], capture_output=True, text=True)
    if done.returncode != 0:
        raise StackError(f"installing Superset into {venv} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return venv


def reader_uri(cfg: StackConfig) -> str:
    """The warehouse as dwh_reader, no password (libpq takes it from Superset's passfile)."""
    return f"postgresql+psycopg2://{READER_ROLE}@{cfg.host}:{cfg.pg_port}/{WAREHOUSE_DB}"


def superset_env(cfg: StackConfig) -> dict[str, str]:
    """What Superset's processes get: paths and a password-less URI, never a secret."""
    return {
        "SUPERSET_CONFIG_PATH": str(CONFIG_FILE),
        "SUPERSET_HOME": str(cfg.superset_dir),
        "FLASK_APP": "superset.app:create_app()",
        "PGPASSFILE": str(cfg.superset_pgpass_file),
        "DWH_SUPERSET_SECRET_KEY_FILE": str(cfg.superset_secret_key_file),
        "DWH_SUPERSET_ADMIN_PASSWORD_FILE": str(cfg.superset_admin_password_file),
        "DWH_SUPERSET_ADMIN_USER": SUPERSET_ADMIN,
        "DWH_SUPERSET_METADATA_URI": f"postgresql+psycopg2://{SUPERSET_ROLE}@{cfg.host}:{cfg.pg_port}/{SUPERSET_DB}",
        "PYTHONUNBUFFERED": "1",
    }


def _health(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=3).status_code == 200
    except requests.RequestException:
        return False


class Superset(ManagedProcess):
    def __init__(self, cfg: StackConfig):
        venv = venv_dir()
        super().__init__(
            name="superset",
            argv=[
                str(venv / "bin" / "gunicorn"), "--bind", f"{cfg.host}:{cfg.ports['superset']}",
                "--workers", str(WORKERS), "--worker-class", "gthread", "--threads", str(THREADS),
                "--timeout", "120", "--graceful-timeout", "10", "--log-level", "warning",
                "superset.app:create_app()",
            ],
            port=cfg.ports["superset"],
            pid_file=cfg.pid_file("superset"),
            log_file=cfg.log_file("superset"),
            env=superset_env(cfg),
            cwd=cfg.superset_dir,
            start_timeout=START_TIMEOUT,
            ready=lambda: _health(cfg.superset_url),
        )
        self.cfg = cfg
        self.venv = venv

    @property
    def stamp(self) -> Path:
        return self.cfg.superset_dir / "initialized"

    def _stamp_text(self) -> str:
        password = secrets.superset_admin_password(self.cfg)
        digest = hashlib.sha256(password.encode()).hexdigest()[:16]
        return f"{SUPERSET_VERSION} port={self.cfg.pg_port} admin={digest}\n"

    def _run(self, label: str, argv: list[str], timeout: float = 600) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {label}\n".encode())
            log.flush()
            try:
                done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, **self.env}, cwd=self.cwd, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise StackError(f"superset: {label} did not finish within {timeout:.0f}s; see {self.log_file}") from None
        if done.returncode != 0:
            raise StackError(f"superset: {label} failed (exit {done.returncode}); last lines of {self.log_file}:\n"
                             f"{tail(self.log_file)}")

    def prepare(self) -> bool:
        """Secrets, then (once) the metadata schema, roles and permissions, and the admin login."""
        self.cfg.superset_dir.mkdir(parents=True, exist_ok=True)
        secrets.superset_secret_key(self.cfg)
        secrets.superset_admin_password(self.cfg)
        secrets.write_pgpass(self.cfg)
        if self.stamp.exists() and self.stamp.read_text() == self._stamp_text():
            return False
        bin_dir = self.venv / "bin"
        self._run("superset db upgrade", [str(bin_dir / "superset"), "db", "upgrade"])
        self._run("superset init", [str(bin_dir / "superset"), "init"])
        self._run("admin login", [str(bin_dir / "python"), str(SUPERSET_FILES / "ensure_admin.py")])
        self.stamp.write_text(self._stamp_text())
        return True

    def start(self) -> bool:
        if self.is_running():
            return False
        self.venv = ensure_venv()
        self.prepare()
        return super().start()


# ----- dashboards as code ---------------------------------------------------------------------


class SupersetApi:
    """Superset's REST API as the admin: a JWT for the API and the session's CSRF token.

    The JWT lives 15 minutes (Superset's default): a request answered 401 "Token has expired"
    logs in again and is sent once more, so a long import or a long-lived client keeps working."""

    def __init__(self, cfg: StackConfig, timeout: float = 120):
        self.url = cfg.superset_url
        self.timeout = timeout
        self.session = requests.Session()
        self._cfg = cfg
        self._login()

    def _login(self) -> None:
        cfg = self._cfg
        self.session.headers.pop("Authorization", None)
        password = secrets.superset_admin_password(cfg)
        resp = self.session.post(f"{self.url}/api/v1/security/login", timeout=self.timeout,
                                 json={"username": SUPERSET_ADMIN, "password": password, "provider": "db", "refresh": False})
        if resp.status_code != 200:
            raise StackError(f"superset: the admin login was refused (HTTP {resp.status_code}); "
                             f"is {cfg.superset_admin_password_file} the password Superset has?")
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"
        csrf = self.get("/api/v1/security/csrf_token/")["result"]
        self.session.headers.update({"X-CSRFToken": csrf, "Referer": self.url})

    def request(self, method: str, path: str, **kw) -> requests.Response:
        """One API call; an expired token is renewed and the call sent again, once."""
        resp = self.session.request(method, f"{self.url}{path}", timeout=self.timeout, **kw)
        if resp.status_code == 401 and "expired" in resp.text.lower():
            self._login()
            resp = self.session.request(method, f"{self.url}{path}", timeout=self.timeout, **kw)
        return resp

    def get(self, path: str, **params) -> dict:
        resp = self.request("GET", path, params=params or None)
        if resp.status_code != 200:
            raise StackError(f"superset: GET {path} answered HTTP {resp.status_code}: {resp.text[:500]}")
        return resp.json()

    def post(self, path: str, **kw) -> requests.Response:
        return self.request("POST", path, **kw)

    def list_all(self, resource: str, columns: list[str]) -> list[dict]:
        rison = f"(columns:!({','.join(columns)}),page:0,page_size:1000)"
        return self.get(f"/api/v1/{resource}/", q=rison)["result"]


def save_query_context(api: SupersetApi, chart_id: int, context: dict) -> None:
    """Store a chart's query context, as Explore's Save does: what the chart data API and reports run."""
    resp = api.request("PUT", f"/api/v1/chart/{chart_id}",
                       json={"query_context": json.dumps(context), "query_context_generation": True})
    if resp.status_code != 200:
        raise StackError(f"superset: saving the query context of chart {chart_id} answered HTTP {resp.status_code}: "
                         f"{resp.text[:500]}")


# Superset 6.1's dashboard import overwrites dashboards only: the charts, datasets and the
# database it brings along are created when missing but never updated. So each kind is
# imported by its own endpoint with overwrite, parents first; each import is one transaction.
IMPORT_STEPS = (("database", "Database"), ("dataset", "SqlaTable"), ("chart", "Slice"), ("dashboard", "Dashboard"))


def bundle_zip(bundle: Bundle, cfg: StackConfig, model_type: str = "Dashboard") -> bytes:
    """The bundle as Superset's import ZIP of ``model_type``: its database pointed at this stack's
    warehouse, and what the catalog derives added (``superset_derived``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, text in sorted(bundle.files.items()):
            data = yaml.safe_load(text)
            if rel == "metadata.yaml":
                data["type"] = model_type
            elif rel.startswith("datasets/"):
                data = describe_dataset(data)
            elif rel.startswith("dashboards/"):
                data = describe_dashboard(data, bundle)
            elif rel.startswith("charts/"):
                data = describe_chart(data)
            else:
                data["sqlalchemy_uri"] = reader_uri(cfg)
            zf.writestr(f"export/{rel}", yaml.safe_dump(data, sort_keys=False))
    return buf.getvalue()


@dataclass
class ImportResult:
    dashboards: int
    charts: int
    datasets: int

    def __str__(self) -> str:
        return f"{self.dashboards} dashboard(s), {self.charts} chart(s), {self.datasets} dataset(s) imported"


def import_dashboards(cfg: StackConfig, root: Path | None = None) -> ImportResult:
    """Check the dashboards directory (default: the package's), then import it into the running Superset (upsert by uuid)."""
    bundle = load_bundle(root)  # BundleError names the broken file; Superset is not touched
    api = SupersetApi(cfg)
    for resource, model_type in IMPORT_STEPS:
        files = {"formData": (f"{resource}s.zip", bundle_zip(bundle, cfg, model_type), "application/zip")}
        resp = api.post(f"/api/v1/{resource}/import/", files=files, data={"overwrite": "true", "passwords": "{}"})
        if resp.status_code != 200:
            raise BundleError(f"Superset refused the {resource}s in {bundle.root} (HTTP {resp.status_code}): "
                              f"{_import_errors(resp)}")
    return ImportResult(len(bundle.dashboards), len(bundle.charts), len(bundle.datasets))


def _import_errors(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:1000]
    errors = body.get("errors") or [body]
    parts = []
    for err in errors:
        extra = err.get("extra") or {}
        detail = {k: v for k, v in extra.items() if k not in ("issue_codes",)}
        parts.append(f"{err.get('message', '')} {json.dumps(detail)[:800] if detail else ''}".strip())
    return "; ".join(parts)


_EXPORT_ID_SUFFIX = re.compile(r"_\d+$")


class _ExportDumper(yaml.SafeDumper):
    """Superset's export YAML, with multi-line strings (a chart's query context) as literal blocks."""


_ExportDumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def export_dashboards(cfg: StackConfig, root: Path | None = None) -> list[str]:
    """Write every dashboard in Superset (with its charts, datasets, database) to ``root``.

    ``root`` defaults to the checkout's ``dwh_assets/warehouse/dashboards/``.

    Files keep their names where the uuid is already in the directory; new ones get
    Superset's name without its instance-specific id. The database file gets the canonical
    URI back. Files of objects Superset no longer has are removed. Returns the changes.
    """
    root = (root or _editable_dashboards()).resolve()
    api = SupersetApi(cfg)
    ids = [d["id"] for d in api.list_all("dashboard", ["id"])]
    if not ids:
        raise StackError("superset has no dashboard to export")
    resp = api.request("GET", "/api/v1/dashboard/export/", params={"q": f"!({','.join(map(str, ids))})"})
    if resp.status_code != 200:
        raise StackError(f"superset: the export answered HTTP {resp.status_code}: {resp.text[:500]}")
    existing: dict[str, Path] = {}
    for path in root.rglob("*.yaml") if root.exists() else ():
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and data.get("uuid"):
            existing[str(data["uuid"])] = path.relative_to(root)
    wanted: dict[Path, str] = {}
    with zipfile.ZipFile(io.BytesIO(resp.content)) as zf:
        for name in zf.namelist():
            rel = Path(*Path(name).parts[1:])  # drop the export's root folder
            text = zf.read(name).decode()
            data = yaml.safe_load(text)
            if _normalise(rel, data):
                text = yaml.dump(data, Dumper=_ExportDumper, sort_keys=False, allow_unicode=True)
            if isinstance(data, dict) and str(data.get("uuid")) in existing:
                rel = existing[str(data["uuid"])]
            elif rel.parts[0] in ("charts", "dashboards", "datasets"):
                rel = rel.with_name(_EXPORT_ID_SUFFIX.sub("", rel.stem) + ".yaml")
            wanted[rel] = text
    changes = []
    for rel, text in sorted(wanted.items()):
        path = root / rel
        if rel == Path("metadata.yaml") and path.exists():
            continue  # only its timestamp would change
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            changes.append(f"{'updated' if path.exists() else 'added'} {rel}")
            path.write_text(text)
    for path in sorted(root.rglob("*.yaml")):
        if path.relative_to(root) not in wanted:
            changes.append(f"removed {path.relative_to(root)}")
            path.unlink()
    load_bundle(root)  # what was written must import again
    return changes


def _editable_dashboards() -> Path:
    """The package's dashboards, when they are a checkout's files (an installed package's are not to be edited)."""
    if checkout_root() is None:
        raise StackError(f"dwh dashboards export: the dashboards at {PACKAGED_DASHBOARDS} belong to an installed "
                         f"package, not to a checkout; give --directory DIR to write the export there")
    return PACKAGED_DASHBOARDS


# What names only one Superset's objects (its ids), in a chart's form data and query context.
INSTANCE_KEYS = ("datasource", "dashboards", "slice_id", "dashboardId")


def _normalise(rel: Path, data: object) -> bool:
    """Drop what only names this Superset's own ids (the import sets them again from the uuids),
    and what the import derives from the catalog (``superset_derived``)."""
    if not isinstance(data, dict):
        return False
    if rel.parts[0] == "databases":
        data["sqlalchemy_uri"] = canonical_uri(str(data.get("sqlalchemy_uri", "")))
    elif rel.parts[0] == "charts" and isinstance(data.get("params"), dict):
        for key in INSTANCE_KEYS:
            data["params"].pop(key, None)
        if data.get("query_context"):
            data["query_context"] = normalised_query_context(str(data["query_context"]))
    elif rel.parts[0] == "datasets":
        _normalise_dataset(data)
    elif rel.parts[0] == "dashboards" and isinstance(data.get("position"), dict):
        exported_dashboard(data)
    else:
        return False
    return True


def _normalise_dataset(data: dict) -> None:
    # Descriptions and the catalog's column names come from the catalog at every import: the
    # repository keeps none. Columns in name order: Superset exports them in an order of its own.
    data["description"] = None
    try:
        labelled = {c.name for c in PRODUCT.relation(f"{data.get('schema')}.{data.get('table_name')}").columns
                    if c.verbose_name}
    except KeyError:
        labelled = set()
    columns = [c for c in data.get("columns") or [] if isinstance(c, dict)]
    for column in columns:
        column["description"] = None
        if column.get("column_name") in labelled:
            column["verbose_name"] = None
    data["columns"] = sorted(columns, key=lambda c: str(c.get("column_name")))


def normalised_query_context(text: str) -> str:
    """A chart's saved query context as the repository keeps it: indented JSON (reviewable in YAML),
    without this Superset's ids and without its form data (the chart's params: ``describe_chart``)."""
    context = json.loads(text)
    context.pop("datasource", None)
    context.pop("form_data", None)
    for query in context.get("queries") or []:
        query.pop("datasource", None)
        query.pop("url_params", None)
    return json.dumps(context, indent=1, sort_keys=True) + "\n"


def canonical_uri(uri: str) -> str:
    """The stack's connection URI with the default port, as the repository keeps it; never a password."""
    return re.sub(r"//([^:@/]+)(:[^@/]*)?@[^/]+/", rf"//\1@{CANONICAL_HOST_PORT}/", uri, count=1)
