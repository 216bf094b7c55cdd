"""Deterministic source data: one seeded world that every source system serves.

The control plane (Postgres), the Clerk emulator and the Prometheus usage exporter
are separate processes; each rebuilds the same ``World`` from (seed, scale,
anchor_day, history_days) so that their ids agree and the warehouse can join them.
Events are not generated here: there can be millions, so ``control_plane.py`` derives
them inside Postgres from the instances with a deterministic hash; usage samples are
computed per instance and time by ``usage_at`` wherever they are needed (the exporter,
the back-fill), never held.

History covers ``[anchor_day - history_days, anchor_day)`` (UTC, whole days). The world
itself holds the entities (organizations, users, memberships, instances and their few
state changes): its size grows with the fleet (about 3 KB per instance, its users
included) and not with the history.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import uuid
from dataclasses import dataclass, field
from functools import cached_property

from dwh_assets.local.config import DEFAULT_HISTORY_DAYS
from dwh_assets.warehouse import catalog

UTC = dt.timezone.utc

# Demo sizes at scale 1.0; benchmarks use 10-100x.
ORGS_PER_SCALE = 200
USERS_PER_SCALE = 1200
INSTANCES_PER_SCALE = 1000
EVENTS_PER_SCALE = 100_000

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

FIRST_NAMES = [
    "Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Zoë", "José", "Łukasz",
    "Søren", "Françoise", "Müller", "Ngozi", "Aiyana", "Mei", "Rahul", "Olúwaseun",
    "Dmitri", "Иван", "Αλέξανδρος", "美咲", "지훈", "محمد", "O'Brien", "Jean-Luc",
]
LAST_NAMES = [
    "Lovelace", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov", "Núñez",
    "Kowalski", "Kierkegaard", "Dupont", "Øvergaard", "Adeyemi", "Chen", "Patel",
    "Ivanova", "Петров", "Παπαδόπουλος", "山田", "김", "O'Connor", "van der Berg",
    "Smith, Jr.", 'The "Great"',
]
ORG_WORDS = [
    "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne",
    "Tyrell", "Cyberdyne", "Soylent", "Wonka", "Gringotts", "Oceanic", "Nakatomi",
    "Zürich", "Café", "Ñandú", "Ærø",
]
ORG_SUFFIXES = ["Labs", "Inc", "GmbH", "Systems", "Data", "Cloud", "AB", "S.A.", "Co"]
PLANS = ["free", "hobby", "pro", "enterprise"]
REGIONS = ["us-east-1", "us-west-2", "eu-central-1", "ap-southeast-1"]
CPU_CHOICES = [1, 2, 4, 8, 16]
INSTANCE_STATES = catalog.INSTANCE_STATES.values  # the warehouse checks them: one list, the catalog's

DAY = 86_400
GIB = 1024**3


def clerk_id(prefix: str, rng: random.Random) -> str:
    """An id shaped like Clerk's (prefix + 27 base62 characters)."""
    return prefix + "_2" + "".join(rng.choice(_BASE62) for _ in range(26))


def to_ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


@dataclass(slots=True)
class Organization:
    id: str
    name: str
    slug: str
    plan: str
    created_by: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    max_allowed_memberships: int
    public_metadata: dict


@dataclass(slots=True)
class User:
    id: str
    first_name: str | None
    last_name: str | None
    username: str | None
    gender: str
    # [(email_id, address)], possibly empty
    email_addresses: list[tuple[str, str]]
    primary_email_address_id: str | None
    phone_numbers: list[tuple[str, str]]
    public_metadata: dict
    created_at: dt.datetime
    updated_at: dt.datetime
    last_sign_in_at: dt.datetime | None


@dataclass(slots=True)
class Membership:
    id: str
    organization_id: str
    user_id: str
    role: str
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(slots=True)
class Instance:
    id: str  # uuid text
    organization_id: str
    name: str
    region: str
    cpu: int
    memory_gb: int
    storage_gb: int
    created_at: dt.datetime
    deleted_at: dt.datetime | None
    # phase of the daily usage wave, so series differ
    phase: float = 0.0

    def alive_at(self, t: dt.datetime) -> bool:
        return self.created_at <= t and (self.deleted_at is None or t < self.deleted_at)


@dataclass(slots=True)
class StateChange:
    instance_id: str
    state: str
    changed_at: dt.datetime


@dataclass
class World:
    seed: int
    scale: float
    anchor_day: dt.date
    history_days: int = DEFAULT_HISTORY_DAYS
    organizations: list[Organization] = field(default_factory=list)
    users: list[User] = field(default_factory=list)
    memberships: list[Membership] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    state_changes: list[StateChange] = field(default_factory=list)

    @property
    def history_start(self) -> dt.datetime:
        return dt.datetime.combine(self.anchor_day, dt.time(), UTC) - dt.timedelta(days=self.history_days)

    @property
    def history_end(self) -> dt.datetime:
        return dt.datetime.combine(self.anchor_day, dt.time(), UTC)

    def instance_time(self, until: dt.datetime | None = None) -> dt.timedelta:
        """The fleet's summed lifetimes inside the history, up to ``until`` (default: its end)."""
        end = self.history_end if until is None else min(until, self.history_end)
        return sum((min(i.deleted_at or end, end) - max(i.created_at, self.history_start)
                    for i in self.instances if i.created_at < end), dt.timedelta())

    @property
    def n_events(self) -> int:
        return max(1, round(EVENTS_PER_SCALE * self.scale))

    @cached_property
    def organization_ids(self) -> set[str]:
        return {o.id for o in self.organizations}


def _scaled(n: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, round(n * scale))


def _random_time(rng: random.Random, start: dt.datetime, end: dt.datetime) -> dt.datetime:
    span = (end - start).total_seconds()
    # whole milliseconds: Clerk timestamps are epoch ms
    return start + dt.timedelta(milliseconds=int(rng.random() * span * 1000))


def build_world(seed: int = 42, scale: float = 1.0, anchor_day: dt.date | None = None,
                history_days: int = DEFAULT_HISTORY_DAYS) -> World:
    """The world of (seed, scale, anchor_day, history_days): the same arguments, the same world."""
    anchor_day = anchor_day or dt.datetime.now(UTC).date()
    if history_days < 1:
        raise ValueError(f"history_days must be at least 1, got {history_days}")
    rng = random.Random(f"dwh-world-{seed}")
    world = World(seed=seed, scale=scale, anchor_day=anchor_day, history_days=history_days)
    start, end = world.history_start, world.history_end
    # Accounts existed before the history window too.
    account_start = start - dt.timedelta(days=300)

    for _ in range(_scaled(USERS_PER_SCALE, scale, minimum=2)):
        world.users.append(_make_user(rng, account_start, end))
    for i in range(_scaled(ORGS_PER_SCALE, scale)):
        world.organizations.append(_make_org(rng, i, account_start, end, world.users))
    for user in world.users:
        orgs = rng.sample(world.organizations, k=min(len(world.organizations), rng.choice([1, 1, 1, 2, 3])))
        for org in orgs:
            created = max(user.created_at, org.created_at) + dt.timedelta(hours=rng.randint(0, 240))
            created = min(created, end - dt.timedelta(seconds=1))
            world.memberships.append(
                Membership(
                    id=clerk_id("orgmem", rng),
                    organization_id=org.id,
                    user_id=user.id,
                    role="org:admin" if org.created_by == user.id or rng.random() < 0.15 else "org:member",
                    created_at=created,
                    updated_at=created,
                )
            )
    for _ in range(_scaled(INSTANCES_PER_SCALE, scale)):
        inst = _make_instance(rng, world.organizations, start, end)
        world.instances.append(inst)
        world.state_changes.extend(_state_history(rng, inst, end))
    return world


def _make_user(rng: random.Random, start: dt.datetime, end: dt.datetime) -> User:
    uid = clerk_id("user", rng)
    first = rng.choice(FIRST_NAMES) if rng.random() > 0.03 else None
    last = rng.choice(LAST_NAMES) if rng.random() > 0.05 else None
    n_emails = rng.choices([0, 1, 2, 3], weights=[4, 80, 12, 4])[0]
    local = (uid[-8:]).lower()
    emails = [(clerk_id("idn", rng), f"{local}.{k}@example{k}.com") for k in range(n_emails)]
    # The primary address is deliberately not always the first one.
    primary = rng.choice(emails)[0] if emails else None
    phones = [(clerk_id("idn", rng), f"+1555{rng.randint(1000000, 9999999)}") for _ in range(rng.choice([0, 0, 1, 2]))]
    created = _random_time(rng, start, end)
    updated = min(end - dt.timedelta(milliseconds=1), created + dt.timedelta(days=rng.randint(0, 30)))
    signed_in = None if rng.random() < 0.2 else _random_time(rng, created, end)
    return User(
        id=uid,
        first_name=first,
        last_name=last,
        username=f"{(first or 'user').lower()}_{uid[-6:].lower()}" if rng.random() < 0.7 else None,
        gender=rng.choice(["", "", "female", "male", "non-binary"]),
        email_addresses=emails,
        primary_email_address_id=primary,
        phone_numbers=phones,
        public_metadata={"tier": rng.choice(["a", "b"]), "beta": rng.random() < 0.1},
        created_at=created,
        updated_at=updated,
        last_sign_in_at=signed_in,
    )


def _make_org(rng: random.Random, i: int, start: dt.datetime, end: dt.datetime, users: list[User]) -> Organization:
    name = f"{rng.choice(ORG_WORDS)} {rng.choice(ORG_SUFFIXES)} {i}"
    creator = rng.choice(users)
    created = max(creator.created_at, _random_time(rng, start, end - dt.timedelta(days=1)))
    return Organization(
        id=clerk_id("org", rng),
        name=name,
        slug="".join(c if c.isalnum() else "-" for c in name.lower()).strip("-"),
        plan=rng.choice(PLANS),
        created_by=creator.id,
        created_at=created,
        updated_at=created + dt.timedelta(hours=rng.randint(0, 48)),
        max_allowed_memberships=rng.choice([5, 20, 100]),
        public_metadata={"region": rng.choice(REGIONS)},
    )


def _make_instance(rng: random.Random, orgs: list[Organization], start: dt.datetime, end: dt.datetime) -> Instance:
    org = rng.choice(orgs)
    created = _random_time(rng, max(start, org.created_at), end - dt.timedelta(hours=1))
    deleted = None
    if rng.random() < 0.25:
        deleted = _random_time(rng, created + dt.timedelta(minutes=30), end)
    cpu = rng.choice(CPU_CHOICES)
    return Instance(
        id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        organization_id=org.id,
        name=f"db-{rng.randint(0, 10**6):06d}",
        region=rng.choice(REGIONS),
        cpu=cpu,
        memory_gb=cpu * 4,
        storage_gb=rng.choice([10, 50, 100, 500]),
        created_at=created,
        deleted_at=deleted,
        phase=rng.random() * 2 * math.pi,
    )


def _state_history(rng: random.Random, inst: Instance, end: dt.datetime) -> list[StateChange]:
    last = inst.deleted_at or end
    changes = [StateChange(inst.id, "creating", inst.created_at)]
    t = inst.created_at + dt.timedelta(seconds=rng.randint(20, 300))
    changes.append(StateChange(inst.id, "running", t))
    # a few stop/start cycles
    for _ in range(rng.choice([0, 0, 1, 2])):
        t = t + dt.timedelta(hours=rng.randint(2, 200))
        if t >= last - dt.timedelta(minutes=10):
            break
        for state in ("stopping", "stopped", "starting", "running"):
            t = t + dt.timedelta(seconds=rng.randint(5, 600))
            changes.append(StateChange(inst.id, state, t))
    if inst.deleted_at is not None:
        changes.append(StateChange(inst.id, "deleted", max(inst.deleted_at, t + dt.timedelta(seconds=1))))
    return [c for c in changes if c.changed_at < end]


# ----- usage model shared by the exporter (live) and the history back-fill -----------

# The demo's usage series carry the warehouse's default metric names.
METRIC_CPU = catalog.DEFAULT_METRICS["cpu"]
METRIC_MEMORY = catalog.DEFAULT_METRICS["memory"]
METRIC_STORAGE = catalog.DEFAULT_METRICS["storage"]
METRIC_NAMES = (METRIC_CPU, METRIC_MEMORY, METRIC_STORAGE)


def usage_at(inst: Instance, t: dt.datetime) -> dict[str, float]:
    """Values of the three usage series of ``inst`` at ``t`` (a pure function of time)."""
    age = (t - inst.created_at).total_seconds()
    omega = 2 * math.pi / DAY
    x = t.timestamp()
    x0 = inst.created_at.timestamp()
    # cpu utilisation u(t) = 0.2 + 0.15 sin(wt + phase); the counter is its integral.
    cpu_seconds = inst.cpu * (
        0.2 * age - 0.15 / omega * (math.cos(omega * x + inst.phase) - math.cos(omega * x0 + inst.phase))
    )
    memory = inst.memory_gb * GIB * (0.5 + 0.25 * math.sin(omega * x + inst.phase))
    storage = inst.storage_gb * GIB * (0.1 + 0.8 * min(1.0, age / (30 * DAY)))
    return {METRIC_CPU: round(cpu_seconds, 3), METRIC_MEMORY: round(memory), METRIC_STORAGE: round(storage)}


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_OMEGA = 2 * math.pi / DAY


class UsageCurve:
    """``usage_at`` of one instance at whole epoch seconds, bit for bit, without datetimes.

    The back-fill evaluates every instance at every step of the history (hundreds of
    millions of values at 10,000 instances over a year): this does the same arithmetic as
    ``usage_at`` in the same order, with the per-instance terms computed once. The age is
    exact integer microseconds divided by 10**6, as ``timedelta.total_seconds`` does.
    """

    __slots__ = ("created_us", "cos0", "phase", "cpu", "memory_bytes", "storage_bytes")

    def __init__(self, inst: Instance):
        self.created_us = (inst.created_at - _EPOCH) // dt.timedelta(microseconds=1)
        self.cos0 = math.cos(_OMEGA * inst.created_at.timestamp() + inst.phase)
        self.phase = inst.phase
        self.cpu = inst.cpu
        self.memory_bytes = inst.memory_gb * GIB
        self.storage_bytes = inst.storage_gb * GIB

    def at(self, t: int) -> tuple[float, int, int]:
        """(cpu seconds, memory bytes, storage bytes) at epoch second ``t``, as ``usage_at`` rounds them."""
        age = (t * 1_000_000 - self.created_us) / 1_000_000
        x = float(t)
        cpu_seconds = self.cpu * (0.2 * age - 0.15 / _OMEGA * (math.cos(_OMEGA * x + self.phase) - self.cos0))
        memory = self.memory_bytes * (0.5 + 0.25 * math.sin(_OMEGA * x + self.phase))
        storage = self.storage_bytes * (0.1 + 0.8 * min(1.0, age / (30 * DAY)))
        return round(cpu_seconds, 3), round(memory), round(storage)
