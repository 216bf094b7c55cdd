"""``dwh forget``: erase a Clerk user or organization from the warehouse (docs/personal-data.md).

The erasure itself is ``dwh.forget(subject, id)`` (``sql/routines/03_erasure.sql``), one
transaction run as the owner: every row about the subject goes from the copies and their
snapshots, its id is cleared where it only mentions the subject, the marts' days that counted
it are queued, and ``dwh.erasure_log`` records a keyed hash of the id (never the id). The
dimension refreshes leave logged subjects out while the source still holds them. Where the ids
are held comes from the catalog (``Column.subject``, written to ``dwh.subject_columns`` by
``dwh migrate``). This module checks the id, runs the function and says what it removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row

from dwh_assets.warehouse.catalog_model import Subject
from dwh_assets.warehouse.connect import connect
from dwh_assets.warehouse.deployment import DeploymentConfig
from dwh_assets.warehouse.errors import DwhError

# Clerk's ids are short tokens (user_2abc…); anything with spaces or control characters is a slip.
ID_PATTERN = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")


class ErasureError(DwhError):
    """An erasure that did not happen; the message says why and what to do. Nothing was changed."""


@dataclass(frozen=True)
class Erasure:
    """What ``dwh.forget`` did: its ``dwh.erasure_log`` row."""

    log_id: int
    subject: Subject
    subject_hash: str
    rows_deleted: dict[str, int]
    values_cleared: dict[str, int]

    @property
    def removed_anything(self) -> bool:
        return any(self.rows_deleted.values()) or any(self.values_cleared.values())

    def summary(self) -> str:
        head = f"{self.subject.value} forgotten (dwh.erasure_log id {self.log_id}, keyed hash {self.subject_hash[:12]}…)"
        if not self.removed_anything:
            return (f"{head}: no row of the warehouse held it. The erasure is recorded, so the refreshes will leave it "
                    f"out should the source send it; if rows were expected, check the id.")
        deleted = [f"{n} row(s) of {relation}" for relation, n in sorted(self.rows_deleted.items()) if n]
        cleared = [f"{n} value(s) of {column}" for column, n in sorted(self.values_cleared.items()) if n]
        done = "; ".join(([f"deleted {', '.join(deleted)}"] if deleted else [])
                         + ([f"cleared {', '.join(cleared)}"] if cleared else []))
        return (f"{head}: {done}. The marts' days that counted it are queued for their pg_cron jobs; the refreshes "
                f"leave it out from now on, while the source still holds it.")


def check_id(subject: Subject, value: str) -> str:
    """The id as given, or a sentence saying what is wrong with it (before anything is connected to)."""
    if not ID_PATTERN.fullmatch(value or ""):
        raise ErasureError(f"--{subject.value} needs the id the source knows the {subject.value} by (e.g. "
                           f"{'user_' if subject is Subject.USER else 'org_'}2abc…): 1-200 characters, no spaces or "
                           "control characters. Nothing was erased.")
    return value


def forget(cfg: DeploymentConfig, subject: Subject, subject_id: str) -> Erasure:
    """Erase ``subject_id`` everywhere, in one transaction as the owner; a sentence if it cannot."""
    check_id(subject, subject_id)
    where = f"{cfg.warehouse.host}:{cfg.warehouse.port}/{cfg.warehouse.database}"
    with connect(cfg, "owner") as conn:
        conn.row_factory = dict_row
        try:
            row = conn.execute("SELECT * FROM dwh.forget(%s, %s)", (subject.value, subject_id)).fetchone()
        except (psycopg.errors.UndefinedFunction, psycopg.errors.UndefinedTable):
            raise ErasureError(f"the warehouse {where} has no dwh.forget(): migrate it with this version first "
                               "(`dwh migrate`). Nothing was erased.") from None
        except psycopg.errors.InsufficientPrivilege as e:
            raise ErasureError(f"{cfg.logins()['owner'].user} may not erase in {where} ({e.diag.message_primary}): "
                               "dwh forget runs as the owner login. Nothing was erased.") from None
        except psycopg.Error as e:
            hint = f" ({e.diag.message_hint})" if e.diag.message_hint else ""
            raise ErasureError(f"{e.diag.message_primary or e}{hint}. Nothing was erased.") from None
    return Erasure(int(row["id"]), Subject(row["subject"]), row["subject_hash"],
                   dict(row["rows_deleted"]), dict(row["values_cleared"]))
