"""Deployment configurations for tests that touch no server (and for the ones that do)."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

from dwh_assets.warehouse.deployment import DeploymentConfig

# TCP port 1 (tcpmux) is served nowhere in practice; unlike a free port, choosing it opens no socket.
NOWHERE_PORT = 1


def deep_merge(base: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def offline_values(home: Path, **overrides: Any) -> dict:
    """A deployment whose servers are on a port where nothing answers: for tests that touch no server."""
    secrets = home / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    for name, value in (("cp", "cp-password"), ("clerk", "sk_test_offline"), ("owner", "owner-password")):
        (secrets / name).write_text(value + "\n")
        (secrets / name).chmod(0o600)
    values = {
        "warehouse": {"host": "127.0.0.1", "port": NOWHERE_PORT,
                      "owner": {"user": "dwh_owner", "password_file": str(secrets / "owner")}},
        "control_plane": {"host": "127.0.0.1", "port": NOWHERE_PORT, "password_file": str(secrets / "cp")},
        "clerk": {"api_url": f"http://127.0.0.1:{NOWHERE_PORT}", "secret_key_file": str(secrets / "clerk")},
        "prometheus": {"url": f"http://127.0.0.1:{NOWHERE_PORT}"},
        "reader": {"directory": str(home / "reader")},
        "history": {"start": dt.date(2026, 1, 1)},
    }
    return deep_merge(values, overrides)


def offline_deployment(home: Path, **overrides: Any) -> DeploymentConfig:
    return DeploymentConfig.from_values(offline_values(home, **overrides))
