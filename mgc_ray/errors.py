"""Bad input becomes one clear line and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


class UserError(Exception):
    """A problem with what the user asked for or gave; the message names it and the fix."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: a bad flag is a UserError (exit 2 via `run_cli`),
    not argparse's usage dump."""

    def error(self, message: str) -> None:
        raise UserError(f"{message} (see {self.prog} --help)")


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a CLI `main`, turning `UserError` into `error: ...` on stderr and exit 2.

    Args:
        main: the command's main function; returns an exit status or None (0).
        argv: arguments (None: sys.argv[1:]).
    """
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code or 0)
