"""Argument types of the operator's commands: each turns one word into a value, or says
in one line what is wrong with it (argparse prints it with the command's usage)."""

from __future__ import annotations

import argparse
import math

from reconciler.ops.vocabulary import STATUSES
from reconciler.settings import check_batch_size

__all__ = [
    "batch_size_arg",
    "finite_float_arg",
    "job_id_arg",
    "job_key_arg",
    "limit_arg",
    "names_arg",
    "positive_int_arg",
    "statuses_arg",
]


def statuses_arg(value: str) -> list[str]:
    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    for name in names:
        if name not in STATUSES:
            raise argparse.ArgumentTypeError(
                f"unknown status {name!r}; one of {', '.join(STATUSES)}"
            )
    return names


def names_arg(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def job_key_arg(value: str) -> str:
    """A job id as given: the reconciler's own ids are whole numbers (checked by
    :func:`job_id_arg` once the profile is known), a profile's table may use uuids or text."""
    if not value or "\x00" in value:
        raise argparse.ArgumentTypeError(f"job id {value!r} is empty or holds a NUL byte")
    return value


def job_id_arg(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"job id {value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"job id {value} must be 1 or more")
    return number


def limit_arg(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"limit {value!r} must be a whole number, 1 or more")
    return number


def positive_int_arg(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return number


def batch_size_arg(value: str) -> int:
    """--batch-size: the one rule of reconciler.settings.check_batch_size."""
    try:
        return check_batch_size(int(value))
    except ValueError as exc:
        message = str(exc) if "whole number from" in str(exc) else "must be a whole number"
        raise argparse.ArgumentTypeError(f"batch size {value!r} {message}") from None


def finite_float_arg(value: str) -> float:
    """A number that is not NaN or an infinity (a NaN never compares, inf never trips)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r} is not a finite number")
    return number
