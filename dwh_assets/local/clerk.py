"""The Clerk Backend API emulator as a stack component (Clerk is a SaaS: this stands in)."""

from __future__ import annotations

import sys

from dwh_assets.local.config import REPO_ROOT, StackConfig
from dwh_assets.local import secrets
from dwh_assets.local.process import ManagedProcess


class ClerkEmulator(ManagedProcess):
    def __init__(self, cfg: StackConfig):
        super().__init__(
            name="clerk-emulator",
            argv=[
                sys.executable, "-m", "dwh_assets.local.clerk_emulator",
                "--port", str(cfg.ports["clerk"]),
                *cfg.world_args(),
                "--secret-file", str(cfg.clerk_secret_file),
            ],
            port=cfg.ports["clerk"],
            pid_file=cfg.pid_file("clerk-emulator"),
            log_file=cfg.log_file("clerk-emulator"),
            cwd=REPO_ROOT,
            start_timeout=60,
        )
        self.cfg = cfg

    def start(self) -> bool:
        secrets.clerk_secret_key(self.cfg)  # the emulator reads the key file at start
        return super().start()
