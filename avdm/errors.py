"""Errors that reach the user as one sentence (the entry points print them without a traceback)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class AvdmUserError(Exception):
    """A problem the user fixes in their config or files; its message is the whole report."""


class MissingWeightsError(AvdmUserError):
    """Pretrained weights named in the config are neither on disk nor reachable."""


class ConfigError(AvdmUserError, ValueError):
    """A config value is out of range or unknown; the message names the key and what is accepted."""


def find_user_error(err: BaseException | None) -> AvdmUserError | None:
    """The :class:`AvdmUserError` behind ``err`` (Hydra's ``instantiate`` wraps what targets raise)."""
    while err is not None:
        if isinstance(err, AvdmUserError):
            return err
        err = err.__cause__ or err.__context__
    return None


def report_user_errors(fn: F) -> F:
    """Decorate a CLI entry: a user error ends the program with one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            user_error = find_user_error(err)
            if user_error is None:
                raise
            print(f"avdm: error: {user_error}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
