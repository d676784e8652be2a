"""CLIPScore of videos against their prompts, averaged over frames (as the AVDM2 paper reports it).

torchmetrics' :class:`~torchmetrics.multimodal.CLIPScore` does the scoring (``100 * max(cos, 0)`` of
CLIP image and text embeddings). Two things are added: the weights come from a local folder only
(nothing is downloaded), and the model is wrapped so that ``get_image_features`` /
``get_text_features`` return tensors: in transformers 5 they return a ``BaseModelOutputWithPooling``,
on which torchmetrics 1.9 calls ``.norm`` (torchmetrics issue 3407, fixed after 1.9).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from avdm.errors import MissingWeightsError


class _TensorFeatures(nn.Module):
    """A CLIP model whose feature methods return the projected embedding tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config  # torchmetrics reads the text length from it

    @staticmethod
    def _tensor(out: Any) -> Tensor:
        if isinstance(out, Tensor):
            return out
        return out.pooler_output if getattr(out, "pooler_output", None) is not None else out[0]

    def get_image_features(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def load_clip(path: str | Path) -> tuple[nn.Module, Any]:
    """CLIP model and processor from a local diffusers-style folder (``save_pretrained`` of both)."""
    from transformers import CLIPModel, CLIPProcessor

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise MissingWeightsError(
            f"Missing CLIP weights for CLIPScore: '{path}' holds no config.json; pass --clip-path to a local "
            "folder (e.g. `huggingface-cli download openai/clip-vit-large-patch14 --local-dir DIR`)"
        )
    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    return _TensorFeatures(model), processor


class FrameCLIPScore(Metric):
    """Mean CLIPScore of every frame of every video against the video's prompt.

    Args:
        clip_path: local folder of a CLIP model and its processor.

    ``update(videos, prompts)``: ``videos (B, 3, F, H, W)`` in ``[-1, 1]``, one prompt per video.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, clip_path: str | Path, **kwargs: Any) -> None:
        from torchmetrics.multimodal import CLIPScore

        super().__init__(**kwargs)
        model, processor = load_clip(clip_path)
        self.clip = CLIPScore(model_name_or_path=lambda: (model, processor))

    def update(self, videos: Tensor, prompts: Sequence[str]) -> None:
        b, _, f, _, _ = videos.shape
        if len(prompts) != b:
            raise ValueError(f"{b} videos need {b} prompts, got {len(prompts)}")
        frames = ((videos.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        frames = frames.permute(0, 2, 1, 3, 4).reshape(b * f, *frames.shape[1:2], *frames.shape[3:])
        self.clip.update(list(frames), [p for p in prompts for _ in range(f)])

    def compute(self) -> Tensor:
        return self.clip.compute()

    def reset(self) -> None:
        super().reset()
        self.clip.reset()
