"""Reading OpenVid-1M's sources: the CSV index of ``(video, caption)`` rows, shard globs and the samples
of a WebDataset-style tar read as a stream. Nothing here decodes video or needs torch, so light tools
(``python -m avdm.data.check``) can use it; :class:`DataSourceError` names a missing or unreadable source.
"""

from __future__ import annotations

import csv
import glob
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from avdm.errors import AvdmUserError


class DataSourceError(AvdmUserError):
    """The CSV, video folder or shards named in the data config are missing or unreadable."""


def read_openvid_csv(csv_path: str | Path) -> list[tuple[str, str]]:
    """``(video file name, caption)`` rows of an OpenVid CSV; other columns are ignored."""
    path = Path(csv_path)
    if not path.is_file():
        raise DataSourceError(f"OpenVid CSV not found: {path} (set data.csv to the OpenVid-1M CSV file)")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = [name.strip() for name in reader.fieldnames or []]
        missing = [col for col in ("video", "caption") if col not in fields]
        if missing:
            raise DataSourceError(
                f"OpenVid CSV {path} (data.csv) lacks the column(s) {missing}; its header is {fields}"
            )
        reader.fieldnames = fields
        return [(row["video"].strip(), (row["caption"] or "").strip()) for row in reader if row["video"]]


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` per sample of a WebDataset tar, read as a stream.

    A sample is a run of consecutive members sharing a key (the name up to the first dot of its
    base name): ``clip7.mp4`` and ``clip7.txt`` give ``("clip7", {"mp4": ..., "txt": ...})``.
    """
    key, files = None, {}
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            stem, _, ext = base.partition(".")
            member_key = f"{folder}/{stem}" if folder else stem
            if member_key != key and key is not None:
                yield key, files
                files = {}
            key = member_key
            data = tar.extractfile(member)
            files[ext.lower()] = data.read() if data is not None else b""
    if key is not None:
        yield key, files


def expand_shards(shards: str | Sequence[str]) -> list[str]:
    """Tar paths from a glob or a list of paths and globs, sorted, without duplicates."""
    patterns = [shards] if isinstance(shards, str) else list(shards)
    found = sorted({p for pattern in patterns for p in glob.glob(str(pattern))})
    if not found:
        raise DataSourceError(f"no OpenVid shards match {patterns} (set data.shards to .tar files or a glob)")
    return found
