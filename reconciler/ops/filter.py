"""The job filter: which jobs a command is about, the same options on every command.

Every command that lists or changes jobs takes the same options (ids,
``--status``, ``--queue``, ``--kind``, ``--tenant``, ``--created-since``,
``--finished-since``, ``--older-than``, ``--limit``). In SQL it is one predicate
(``sql/ops/filter.sql``) placed where a query says ``/*job_filter*/``; every
value is a bound parameter, ``NULL`` meaning "any".
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from reconciler.db import Database
from reconciler.durations import duration_arg, format_duration
from reconciler.ops.args import job_key_arg, limit_arg, names_arg, statuses_arg
from reconciler.ops.confirm import OpsError
from reconciler.ops.vocabulary import DEAD, STATUSES
from reconciler.sqlfiles import query

__all__ = [
    "JobFilter",
    "add_filter_arguments",
    "check_ids",
    "check_statuses",
    "dead_filter",
    "either",
    "filtered_query",
    "resolve_limit",
]

_MARKER = "/*job_filter*/"


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a command is about. Empty tuples and None mean "any"."""

    ids: tuple[int, ...] = ()
    statuses: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    created_since: timedelta | None = None
    finished_since: timedelta | None = None
    older_than: timedelta | None = None  # finished longer ago than this
    limit: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> JobFilter:
        def flat(name: str) -> tuple[str, ...]:
            groups = getattr(args, name, None) or []
            return tuple(dict.fromkeys(item for group in groups for item in group))

        return cls(
            ids=tuple(dict.fromkeys(int(i) for i in getattr(args, "ids", None) or ())),
            statuses=flat("status"),
            queues=flat("queue"),
            kinds=flat("kind"),
            tenants=flat("tenant"),
            created_since=getattr(args, "created_since", None),
            finished_since=getattr(args, "finished_since", None),
            older_than=getattr(args, "older_than", None),
            limit=getattr(args, "limit", None),
        )

    def is_empty(self) -> bool:
        """True when nothing narrows the set (the limit does not count: it is not a choice)."""
        return not (
            self.ids
            or self.statuses
            or self.queues
            or self.kinds
            or self.tenants
            or self.created_since
            or self.finished_since
            or self.older_than
        )

    def binds(self, now: datetime) -> dict[str, Any]:
        """The ``:f_*`` parameters of ``sql/ops/filter.sql``, horizons counted from ``now``."""
        return {
            "f_ids": list(self.ids) or None,
            "f_statuses": list(self.statuses) or None,
            "f_queues": list(self.queues) or None,
            "f_kinds": list(self.kinds) or None,
            "f_tenants": list(self.tenants) or None,
            "f_created_since": now - self.created_since if self.created_since else None,
            "f_finished_since": now - self.finished_since if self.finished_since else None,
            "f_finished_before": now - self.older_than if self.older_than else None,
        }

    def describe(self) -> dict[str, Any]:
        """The filter as given, for JSON output and export records."""
        found: dict[str, Any] = {}
        for name in ("ids", "statuses", "queues", "kinds", "tenants"):
            if getattr(self, name):
                found[name] = list(getattr(self, name))
        for name in ("created_since", "finished_since", "older_than"):
            if getattr(self, name) is not None:
                found[name] = format_duration(getattr(self, name))
        if self.limit is not None:
            found["limit"] = self.limit
        return found

    def required(self, refusal: str, *, everything: bool = False) -> JobFilter:
        """This filter, unless it narrows nothing (and ``--all`` was not given): a command
        that changes jobs never takes every job by accident; ``refusal`` says what to give."""
        if self.is_empty() and not everything:
            raise OpsError(refusal)
        return self

    def with_statuses(self, statuses: Sequence[str]) -> JobFilter:
        return JobFilter(**{**self.__dict__, "statuses": tuple(statuses)})

    def with_ids(self, ids: Sequence[int]) -> JobFilter:
        return JobFilter(**{**self.__dict__, "ids": tuple(ids), "limit": None})


def add_filter_arguments(
    parser: argparse.ArgumentParser,
    *,
    ids: bool = False,
    status: bool = True,
    limit_default: int | None = None,
) -> None:
    """The list filters, the same on every command that takes them."""
    if ids:
        parser.add_argument("ids", nargs="*", type=job_key_arg, metavar="ID", help="job ids")
    group = parser.add_argument_group("filters (repeat an option or separate values by commas)")
    if status:
        group.add_argument(
            "--status",
            action="append",
            type=statuses_arg,
            metavar="STATUS",
            help=f"one of {', '.join(STATUSES)}",
        )
    group.add_argument("--queue", action="append", type=names_arg, metavar="QUEUE")
    group.add_argument("--kind", action="append", type=names_arg, metavar="KIND")
    group.add_argument("--tenant", action="append", type=names_arg, metavar="TENANT")
    group.add_argument(
        "--created-since",
        type=duration_arg,
        metavar="DURATION",
        help="created in the last, e.g. 1h",
    )
    group.add_argument(
        "--finished-since",
        type=duration_arg,
        metavar="DURATION",
        help="finished (or failed) in the last, e.g. 1d",
    )
    group.add_argument(
        "--older-than",
        type=duration_arg,
        metavar="DURATION",
        help="finished longer ago than, e.g. 30d",
    )
    group.add_argument(
        "--limit",
        type=limit_arg,
        default=limit_default,
        metavar="N",
        help=f"at most N jobs{f' (default {limit_default})' if limit_default else ''}",
    )


def filtered_query(file: str, name: str) -> str:
    """Query ``name`` of ``sql/<file>.sql`` with the job filter where it says ``/*job_filter*/``."""
    sql = query(file, name)
    if _MARKER not in sql:
        raise KeyError(f"sql/{file}.sql query {name!r} has no {_MARKER} marker")
    return sql.replace(_MARKER, f"({query('ops/filter', 'jobs')})")


def check_ids(
    db: Database, ids: Sequence[int], *, allowed: Sequence[str] = (), verb: str = ""
) -> None:
    """Refuse unknown job ids, and ids whose status the command does not take."""
    if not ids:
        return
    with db.transaction() as conn:
        found = {
            row.id: row.status
            for row in conn.execute(text(query("ops/filter", "statuses_of")), {"ids": list(ids)})
        }
    missing = [i for i in ids if i not in found]
    if missing:
        raise OpsError(f"no job with id {', '.join(map(str, missing))}; see: reconciler jobs list")
    wrong = [i for i in ids if allowed and found[i] not in allowed]
    if wrong:
        first = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise OpsError(f"job {first} is {found[first]}{more}; {verb} takes {either(allowed)} jobs")


def either(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def resolve_limit(
    db: Database, job_filter: JobFilter, now: datetime, statuses: Sequence[str]
) -> JobFilter:
    """Turn ``--limit N`` into the first N matching ids (oldest first), so batches stop there."""
    if job_filter.limit is None:
        return job_filter
    with db.transaction() as conn:
        ids = conn.execute(
            text(filtered_query("ops/filter", "ids")),
            {
                **job_filter.binds(now),
                "eligible": list(statuses),
                "limit": job_filter.limit,
            },
        ).scalars()
        chosen = list(ids)
    # No match at all must still match nothing, not everything.
    return job_filter.with_ids(chosen or [0])


def check_statuses(job_filter: JobFilter, allowed: Sequence[str], verb: str) -> None:
    wrong = [s for s in job_filter.statuses if s not in allowed]
    if wrong:
        raise OpsError(f"{verb} takes {either(allowed)} jobs, not {either(wrong)}")


def dead_filter(args: argparse.Namespace) -> JobFilter:
    """The filter of a dead-letter command: the options given, dead jobs only."""
    return JobFilter.from_args(args).with_statuses(DEAD)
