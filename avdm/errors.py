"""Errors that reach the user as one sentence (the entry points print them without a traceback)."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class AvdmUserError(Exception):
    """A problem the user fixes in their config or files; its message is the whole report, printed
    as ``avdm: <label>: <message>`` with exit status ``exit_code``."""

    label = "error"
    exit_code = 2


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


def construction_error(err: BaseException) -> str | None:
    """One line for a value a constructor refused while Hydra built it (``instantiate`` wraps the
    ``ValueError`` / ``TypeError`` / ``ImportError`` / Lightning ``MisconfigurationException`` in an
    ``InstantiationException`` that names the config key)."""
    from hydra.errors import InstantiationException

    if not isinstance(err, InstantiationException):
        return None
    cause = err.__cause__ or err.__context__
    while isinstance(cause, InstantiationException):
        cause = cause.__cause__ or cause.__context__
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    # What a constructor raises about its arguments (Lightning: an accelerator or package not there).
    if not isinstance(cause, (ValueError, TypeError, ImportError, MisconfigurationException)):
        return None
    found = re.search(r"full_key: (\S+)", str(err))
    detail = " ".join(str(cause).split())
    return f"{found.group(1)}: {detail}" if found else detail


def report_user_errors(fn: F) -> F:
    """Decorate a CLI entry: a user error ends the program with one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            user_error = find_user_error(err)
            message = str(user_error) if user_error is not None else construction_error(err)
            if message is None:
                raise
            label = user_error.label if user_error is not None else "error"
            print(f"avdm: {label}: {message}", file=sys.stderr)
            sys.exit(user_error.exit_code if user_error is not None else 2)

    return wrapper  # type: ignore[return-value]


class ExportError(AvdmUserError):
    """The student cannot be written as a plain diffusers folder."""
