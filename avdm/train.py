"""``python -m avdm.train +experiment=NAME [key=value ...]``: compose, validate, build, fit.

Errors in the user's config or files (a key out of range, missing weights) end the run with one
line on stderr and exit status 2, never a traceback. The work is in :mod:`avdm.training`:
:func:`~avdm.training.build.build_module` builds the run, :func:`~avdm.training.fit.fit` trains it.
"""

from __future__ import annotations

from avdm.hydra_entry import hydra_command
from avdm.training.fit import fit

main = hydra_command(fit, "train")


if __name__ == "__main__":
    main()
