"""Profiles: the queue tables the reconciler works on, and how each maps onto its lifecycle.

``RECONCILER_PROFILES`` lists them: built-in names (``native``, the
reconciler's own schema and the default; ``procrastinate``) and paths to
TOML files describing any other table (reconciler/profiles/toml.py). The
daemon runs every scheduled task for every listed profile; ``--profile``
picks one for ``run`` and the operator commands.

- model.py: what a profile is; toml.py: one read from a file;
  procrastinate.py: the built-in one; live.py: a profile checked against the
  live catalog; statements.py: its SQL (sql/profiles/); tasks.py: the five
  tasks for it; check.py: ``profiles check`` and its index advice.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.db import Database
from reconciler.profiles.live import Bound, bind
from reconciler.profiles.model import Profile, ProfileError
from reconciler.profiles.procrastinate import functions
from reconciler.profiles.procrastinate import profile as procrastinate_profile
from reconciler.profiles.toml import load_table_profile
from reconciler.settings import Settings

__all__ = [
    "BUILT_IN",
    "Profile",
    "ProfileError",
    "bind_profile",
    "configured",
    "native",
    "open_profile",
    "select",
]

BUILT_IN = ("native", "procrastinate")


def native(settings: Settings) -> Profile:
    """The reconciler's own jobs table: what every task and command did before profiles."""
    return Profile(
        name="native",
        kind="native",
        schema=settings.schema_name,
        table="jobs",
        id="id",
        status="status",
        states={
            s: s for s in ("queued", "running", "succeeded", "failed", "stale", "dead", "cancelled")
        },
    )


def configured(settings: Settings) -> list[Profile]:
    """Every profile RECONCILER_PROFILES names, in order; ProfileError on the first bad one."""
    found: list[Profile] = []
    for entry in settings.profile_entries():
        if entry == "native":
            profile = native(settings)
        elif entry == "procrastinate" or entry.startswith("procrastinate:"):
            # procrastinate:SCHEMA when its tables are not in public
            schema = entry.partition(":")[2] or "public"
            profile = procrastinate_profile(schema)
        elif entry.endswith(".toml") or "/" in entry:
            profile = load_table_profile(Path(entry))
        else:
            raise ProfileError(
                f"RECONCILER_PROFILES: {entry!r} is neither a built-in profile"
                f" ({', '.join(BUILT_IN)}) nor a path to a .toml file"
            )
        if any(p.name == profile.name for p in found):
            raise ProfileError(
                f"RECONCILER_PROFILES: two profiles are named {profile.name!r};"
                " give one another name (name = ... in its file)"
            )
        found.append(profile)
    return found


def select(settings: Settings, name: str | None) -> Profile:
    """The profile ``--profile NAME`` names; without a name, the only one configured."""
    profiles = configured(settings)
    if name is None:
        if len(profiles) == 1:
            return profiles[0]
        raise ProfileError(
            f"{len(profiles)} profiles are configured ({', '.join(p.name for p in profiles)});"
            " name one with --profile"
        )
    for profile in profiles:
        if profile.name == name:
            return profile
    raise ProfileError(
        f"--profile {name}: no such profile; configured: {', '.join(p.name for p in profiles)}"
        " (RECONCILER_PROFILES)"
    )


def bind_profile(db: Database, profile: Profile) -> Bound | None:
    """``profile`` checked against the live database; None for native (nothing to check)."""
    if profile.kind == "native":
        return None
    bound = bind(db, profile)
    if profile.kind == "procrastinate":
        functions(db, profile.schema)  # its functions exist too
    return bound


def open_profile(settings: Settings, db: Database, name: str | None) -> Bound | None:
    """``--profile NAME`` selected and checked: None for native; ProfileError (one line)."""
    return bind_profile(db, select(settings, name))
