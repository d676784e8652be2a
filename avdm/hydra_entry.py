"""The entry of every Hydra command (train, synthesize, precompute): check the command line, then run.

Hydra reports a config that does not compose (an unknown experiment, loss or model name, a key that
does not exist, a malformed override) in a multi-line block, and it creates the run folder before the
task runs, so a folder that cannot be made ends in a traceback. :func:`hydra_command` composes the
command line once first, with Hydra's own compose API, and turns those failures into one line
``avdm: error: ...`` and exit status 2; then it hands the command line to ``hydra.main`` unchanged.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from avdm.config import CONFIG_DIR
from avdm.errors import ConfigError, report_user_errors

_MISSING = re.compile(r"Could not (?:find|load) '([^']+)/([^']+)'")
_NO_KEY = re.compile(r"Could not override '([^']+)'\.\s*To append to your config use (\S+)")


def _fail(message: str) -> None:
    print(f"avdm: error: {message}", file=sys.stderr)
    sys.exit(2)


def _group_options(group: str) -> list[str]:
    folder = Path(CONFIG_DIR) / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _composition_message(err: Exception) -> str:
    text = str(err)
    found = _MISSING.search(text)
    if found:
        group, name = found.groups()
        options = _group_options(group)
        accepted = f"accepted: {', '.join(options)}" if options else f"no config group '{group}'"
        return f"{group}={name}: unknown {group} name; {accepted}"
    no_key = _NO_KEY.search(text)
    if no_key:
        key, append = no_key.groups()
        return f"{key}: no such key in the config (to add a new key, write {append})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[:2]) if lines else type(err).__name__


def _first_of_each_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """The override lists to compose: for a sweep (``a=1,2``, ``x=range(3)``), one list per value of it
    with every other sweep at its first value, so each group choice of a multirun is composed once."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    firsts: list[str] = []
    variants: list[tuple[int, list[str]]] = []
    for i, override in enumerate(parsed):
        if override.is_sweep_override():
            values = [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]
            if not values:
                raise ConfigError(f"{override.input_line}: the sweep has no values")
            firsts.append(values[0])
            variants.append((i, values[1:]))
        else:
            firsts.append(override.input_line)
    lists = [firsts]
    for i, values in variants:
        lists += [firsts[:i] + [v] + firsts[i + 1 :] for v in values]
    return lists


def _check_writable(folder: str, key: str) -> None:
    """``folder`` exists as a writable directory or can be created (without creating it)."""
    path = Path(folder).absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}={folder}: cannot create the run folder ({probe} is a file)")
    try:  # os.access trusts permission bits only; a real write also meets read-only or virtual filesystems
        Path(tempfile.mkdtemp(prefix=".avdm-probe-", dir=probe)).rmdir()
    except OSError as err:
        raise ConfigError(
            f"{key}={folder}: cannot create the run folder in {probe} ({err.strerror or err})"
        ) from None


def check_command_line(config_name: str, argv: Sequence[str]) -> None:
    """Compose ``argv``'s overrides against ``conf/<config_name>.yaml``; raise :class:`ConfigError`."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args, _ = get_args_parser().parse_known_args(list(argv))
    reports = (
        args.help,
        args.hydra_help,
        args.info,
        args.shell_completion,
        args.cfg,
        args.experimental_rerun,
    )
    other_config = (args.config_path, args.config_name, args.config_dir)
    if any(reports) or any(other_config):
        return  # Hydra's own reports (nothing runs), or a config this check does not know
    try:
        override_lists = _first_of_each_sweep(args.overrides)
    except HydraException as err:
        raise ConfigError(_composition_message(err)) from None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            for overrides in override_lists:
                cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
                mode = "sweep" if args.multirun else "run"
                try:
                    folder = str(cfg.hydra[mode].dir)
                except OmegaConfBaseException:
                    continue  # a folder named by interpolations only a running job resolves
                _check_writable(folder, f"hydra.{mode}.dir")
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_composition_message(err)) from None
    finally:
        GlobalHydra.instance().clear()


def hydra_command(task: Callable[[DictConfig], Any], config_name: str) -> Callable[[], None]:
    """``main()`` of a Hydra command: the command line checked in one line, then ``hydra.main(task)``;
    ``task``'s own user errors end in one line too (:func:`~avdm.errors.report_user_errors`)."""
    run = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(
        report_user_errors(task)
    )

    def main() -> None:
        try:
            check_command_line(config_name, sys.argv[1:])
        except ConfigError as err:
            _fail(str(err))
        run()

    return main
