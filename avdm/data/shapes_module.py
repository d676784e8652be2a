"""The shapes dataset as a LightningDataModule: written on first use, then read as OpenVid clips."""

from __future__ import annotations

from pathlib import Path

from avdm.config_schema import check_parameters
from avdm.data.openvid import OpenVidDataModule
from avdm.data.shapes import CSV_NAME, VIDEO_DIR, write_shapes_dataset


class ShapesDataModule(OpenVidDataModule):
    """:class:`OpenVidDataModule` over ``root/shapes.csv`` + ``root/videos``; ``prepare_data`` writes any
    missing clip (once, on each node's first process), so a fresh machine needs no download.

    Args:
        root: folder of the dataset.
        num_videos: clips to write (every colour x shape x direction equally often).
        render_frames, render_size, fps, render_seed: how the clips are rendered
            (:func:`avdm.data.shapes.write_shapes_dataset`).
        num_frames, stride, resolution, batch_size, num_workers, seed, on_bad_video: as in
            :class:`OpenVidDataModule`.
    """

    def __init__(
        self,
        root: str = "data/shapes",
        num_videos: int = 1200,
        render_frames: int = 8,
        render_size: int = 64,
        fps: int = 8,
        render_seed: int = 0,
        num_frames: int = 8,
        stride: int = 1,
        resolution: int = 64,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        on_bad_video: str = "skip",
    ) -> None:
        check_parameters(
            self, "data", num_videos=num_videos, render_frames=render_frames, render_size=render_size, fps=fps
        )
        self.root = Path(root)
        self.render = {"num_videos": num_videos, "num_frames": render_frames, "size": render_size}
        self.fps, self.render_seed = fps, render_seed
        super().__init__(
            csv=str(self.root / CSV_NAME),
            video_dir=str(self.root / VIDEO_DIR),
            num_frames=num_frames,
            stride=stride,
            resolution=resolution,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            on_bad_video=on_bad_video,
        )

    def prepare_data(self) -> None:
        write_shapes_dataset(self.root, **self.render, fps=self.fps, seed=self.render_seed)
