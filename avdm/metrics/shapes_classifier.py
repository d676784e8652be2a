"""An FVD feature extractor that means something on the shapes clips: a small video classifier.

The random fallback extractor of :mod:`avdm.metrics.fvd` measures statistics of untrained filters; on the
shapes clips it barely tells a red circle moving left from a blue one moving up. This classifier is
trained by avdm on shapes clips to read the three attributes of a caption (colour, shape, direction), the
way I3D is trained on Kinetics actions; its penultimate activations (64 numbers per clip) are the FVD
features, so FVD on shapes reflects content and motion. It ships as ``avdm/assets/shapes_classifier``
(safetensors + config); reports name it ``shapes-classifier-v1``. Its numbers are comparable only with
each other, never with published FVD.

``python -m avdm.metrics.shapes_classifier OUT_DIR`` trains it again (``make shapes-classifier``): clips are
rendered and written as H.264 mp4 at the dataset's quality, then decoded, so the network sees what the
evaluation reads; 2 CPU minutes.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from avdm.data.shapes import COLOURS, DIRECTIONS, SHAPES, parse_caption
from avdm.errors import MissingWeightsError

NAME = "shapes-classifier-v1"
FEATURE_DIM = 64
HEADS = {"colour": COLOURS, "shape": SHAPES, "direction": DIRECTIONS}


class ShapesVideoClassifier(nn.Module):
    """Three 3D convolutions, a 64-d embedding and one linear head per caption attribute.

    Input ``(B, 3, F, H, W)`` in [-1, 1], resized to ``frames x size x size`` (8 x 32 x 32: the shapes
    clips); the embedding keeps where things are in time and space (a flatten, not a global pool),
    which the direction of motion needs.
    """

    def __init__(self, frames: int = 8, size: int = 32, width: int = 16) -> None:
        super().__init__()
        self.frames, self.size = frames, size
        self.convs = nn.ModuleList(
            [
                nn.Conv3d(3, width, 3, stride=(1, 2, 2), padding=1),
                nn.Conv3d(width, 2 * width, 3, stride=(2, 2, 2), padding=1),
                nn.Conv3d(2 * width, 4 * width, 3, stride=(2, 2, 2), padding=1),
            ]
        )
        flat = 4 * width * max(frames // 4, 1) * (size // 8) ** 2
        self.embed = nn.Linear(flat, FEATURE_DIM)
        self.heads = nn.ModuleDict({k: nn.Linear(FEATURE_DIM, len(v)) for k, v in HEADS.items()})
        self.feature_dim = FEATURE_DIM
        self.name = NAME

    def features(self, videos: Tensor) -> Tensor:
        """``(B, 3, F, H, W)`` in [-1, 1] -> ``(B, 64)`` embeddings (the FVD features)."""
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"videos must be (B, 3, F, H, W), got {tuple(videos.shape)}")
        x = videos.to(self.embed.weight.dtype).clamp(-1, 1)
        if tuple(x.shape[2:]) != (self.frames, self.size, self.size):
            x = F.interpolate(x, size=(self.frames, self.size, self.size), mode="trilinear")
        for conv in self.convs:
            x = F.relu(conv(x))
        return F.relu(self.embed(x.flatten(1)))

    def forward(self, videos: Tensor) -> Tensor:
        """FVD features ``(B, 64)`` (what :class:`~avdm.metrics.FrechetVideoDistance` calls)."""
        return self.features(videos)

    def logits(self, videos: Tensor) -> dict[str, Tensor]:
        """Per attribute, ``(B, len(values))`` logits over :data:`HEADS`."""
        h = self.features(videos)
        return {k: head(h) for k, head in self.heads.items()}

    def predict(self, videos: Tensor) -> list[tuple[str, str, str]]:
        """``(colour, shape, direction)`` per clip."""
        with torch.no_grad():
            logits = self.logits(videos)
        picks = {k: v.argmax(1).tolist() for k, v in logits.items()}
        return [tuple(HEADS[k][picks[k][i]] for k in HEADS) for i in range(videos.shape[0])]  # type: ignore[misc]


def save_classifier(model: ShapesVideoClassifier, out_dir: str | Path, info: dict[str, object]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    config = {"name": NAME, "frames": model.frames, "size": model.size, "width": model.convs[0].out_channels}
    (out / "config.json").write_text(json.dumps({**config, **info}, indent=2) + "\n")
    return out


def load_classifier(folder: str | Path | None = None) -> ShapesVideoClassifier:
    """The shipped classifier (``avdm/assets/shapes_classifier``) or one saved in ``folder``; frozen, eval."""
    from avdm.config import asset_path

    path = Path(folder or asset_path("shapes_classifier"))
    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        raise MissingWeightsError(
            f"Missing the shapes classifier: no model.safetensors + config.json in '{path}'; "
            "run `make shapes-classifier` or pass a folder that has them."
        )
    config = json.loads((path / "config.json").read_text())
    model = ShapesVideoClassifier(config["frames"], config["size"], config["width"])
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model.requires_grad_(False).eval()


def _labels(captions: Sequence[str]) -> dict[str, Tensor]:
    parsed = [parse_caption(c) for c in captions]
    return {k: torch.tensor([HEADS[k].index(p[i]) for p in parsed]) for i, k in enumerate(HEADS)}


def _decoded_clips(root: Path, count: int, seed: int) -> tuple[Tensor, list[str]]:
    """``count`` shapes clips written as mp4 under ``root`` and decoded: ``(N, 3, 8, 32, 32)``, captions."""
    from avdm.data.shapes import write_shapes_dataset
    from avdm.data.video_folder import load_videos

    csv_path = write_shapes_dataset(root, count, num_frames=8, size=32, seed=seed)
    names, videos = load_videos(csv_path.parent / "videos", 8, 32)
    with csv_path.open(newline="") as f:
        mapping = {row["video"]: row["caption"] for row in csv.DictReader(f)}
    return videos, [mapping[n] for n in names]


def train_classifier(
    work_dir: str | Path, num_train: int = 2400, num_val: int = 600, epochs: int = 30, seed: int = 0
) -> tuple[ShapesVideoClassifier, dict[str, float]]:
    """Train on ``num_train`` decoded clips (seeds unseen by the training set of the teachers: 20_000 + ...),
    with light pixel noise as augmentation; returns the model and its per-attribute validation accuracy."""
    torch.manual_seed(seed)
    work = Path(work_dir)
    train_x, train_c = _decoded_clips(work / "train", num_train, 20_000 + seed)
    val_x, val_c = _decoded_clips(work / "val", num_val, 30_000 + seed)
    train_y, val_y = _labels(train_c), _labels(val_c)
    model = ShapesVideoClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (num_train // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for _ in range(epochs):
        order = torch.randperm(num_train)
        for start in range(0, num_train - 63, 64):
            idx = order[start : start + 64]
            x = train_x[idx] + 0.05 * torch.randn_like(train_x[idx])
            logits = model.logits(x)
            loss = sum(F.cross_entropy(logits[k], train_y[k][idx]) for k in HEADS)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        logits = model.logits(val_x)
    accuracy = {k: float((logits[k].argmax(1) == val_y[k]).float().mean()) for k in HEADS}
    return model.requires_grad_(False), accuracy


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m avdm.metrics.shapes_classifier", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--work-dir", type=Path, default=Path("data/shapes_classifier"))
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    model, accuracy = train_classifier(args.work_dir, epochs=args.epochs)
    out = save_classifier(model, args.out_dir, {"validation_accuracy": accuracy})
    print(f"validation accuracy {accuracy}; wrote {out}")
    return out


if __name__ == "__main__":
    main()
