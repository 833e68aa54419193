"""Durations on the command line (--time-budget 90s, 20m, 2h, 1h30m) and in messages; no Ray."""

from __future__ import annotations

import re

from mgc_ray.errors import UserError

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, flag: str = "--time-budget") -> float:
    """A duration in seconds: plain seconds or numbers with s, m, h.

    >>> parse_duration("90s"), parse_duration("20m"), parse_duration("1h30m"), parse_duration("45")
    (90.0, 1200.0, 5400.0, 45.0)

    Raises:
        UserError: not a duration, or not > 0.
    """
    s = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", s):
        seconds = float(s)
    elif re.fullmatch(r"(\d+(\.\d+)?[smh])+", s):
        seconds = sum(float(n) * UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smh])", s))
    else:
        raise UserError(
            f"{flag} {text!r} is not a duration: give seconds or a number with s, m or h (90s, 20m, 2h, 1h30m)"
        )
    if not seconds > 0:
        raise UserError(f"{flag} {text!r} must be more than 0 seconds")
    return seconds


def fmt_duration(seconds: float) -> str:
    """Seconds for people to read.

    >>> fmt_duration(5430.2), fmt_duration(95), fmt_duration(12.34)
    ('1h 30m 30s', '1m 35s', '12s')
    """
    s = int(round(seconds))
    h, m = s // 3600, s % 3600 // 60
    return " ".join(p for p in (f"{h}h" if h else "", f"{m}m" if h or m else "", f"{s % 60}s") if p)
