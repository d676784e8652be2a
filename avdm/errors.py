"""Errors that reach the user as one sentence (the entry points print them without a traceback)."""

from __future__ import annotations


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

