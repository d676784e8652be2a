"""avdm: distill slow video diffusion models into few-step generators (AVDM2, AccVideo) with Lightning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("avdm")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0.0.0+unknown"
