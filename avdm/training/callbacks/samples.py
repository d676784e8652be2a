"""Lightning callbacks: sample videos of the generator during training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from torch import Tensor

from avdm.config_schema import check_parameters
from avdm.data.visualize import frames_sheet, video_grid, write_mp4
from avdm.models.vae import decode_latents
from avdm.training.loggers import log_samples

DEFAULT_PROMPTS = (
    "a red ball moving left",
    "a blue ball moving right",
    "a green ball moving up",
    "a yellow ball moving down",
)


class SampleVideos(L.Callback):
    """Every ``every_n_steps`` generator steps, sample fixed prompts from fixed noise and write an mp4 grid.

    The grid goes to ``<output_dir>/samples/step_<N>.mp4``, a PNG sheet of its frames beside it, and
    both to the loggers that show pictures (:func:`avdm.training.loggers.log_samples`). When every prompt is a
    shapes caption the samples are also scored (:func:`shapes_sample_scores`: prompt accuracy and motion
    faithfulness read from the pixels), logged as ``samples/*`` and kept in ``scores`` by step.

    Args:
        output_dir: folder of the run.
        every_n_steps: generator steps between samples (0: only at the end of training).
        prompts: the prompt set; the same noise (``seed``) is used every time.
        num_steps: generator steps to sample with (``None``: the full ladder).
        fps: frame rate of the mp4.
    """

    def __init__(
        self,
        output_dir: str,
        every_n_steps: int = 100,
        prompts: Sequence[str] = DEFAULT_PROMPTS,
        seed: int = 0,
        num_steps: int | None = None,
        fps: int = 8,
    ) -> None:
        check_parameters(self, "callbacks.samples", every_n_steps=every_n_steps, num_steps=num_steps, fps=fps)
        if not prompts:
            raise ValueError("callbacks.samples.prompts must not be empty")
        self.output_dir, self.every_n_steps = Path(output_dir), every_n_steps
        self.prompts, self.seed, self.num_steps, self.fps = list(prompts), seed, num_steps, fps
        self.written: list[Path] = []
        self.scores: dict[int, dict[str, float]] = {}
        self._last_step = -1

    def _write(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        step = int(module.generator_steps)
        if step == self._last_step or module.vae is None:
            return
        self._last_step = step
        was_training = module.training
        module.eval()
        latents = module.sample(self.prompts, seed=self.seed, num_steps=self.num_steps)
        pixels = decode_latents(module.vae, latents).cpu()
        module.train(was_training)
        if trainer.global_rank != 0:
            return
        grid = video_grid(pixels)
        name = self.output_dir / "samples" / f"step_{step:06d}"
        mp4 = write_mp4(name.with_suffix(".mp4"), grid, self.fps)
        sheet = frames_sheet([("samples", pixels)], self.prompts, name.with_suffix(".png"))
        self.written.append(mp4)
        scores = shapes_sample_scores(pixels, self.prompts)
        if scores:
            self.scores[step] = scores
            for logger in trainer.loggers:
                logger.log_metrics({f"samples/{k}": v for k, v in scores.items()}, step=step)
        log_samples(trainer.loggers, mp4, sheet, step, self.fps)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: object) -> None:
        step = int(module.generator_steps)
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self._write(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._write(trainer, module)


def shapes_sample_scores(videos: Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """Prompt accuracy and motion faithfulness of ``(B, 3, F, H, W)`` samples of shapes captions (``{}``
    when a prompt is not one)."""
    from avdm.data.shapes import parse_caption
    from avdm.metrics import MotionFaithfulness, PromptAccuracy

    try:
        for prompt in prompts:
            parse_caption(prompt)
    except ValueError:
        return {}
    accuracy, motion = PromptAccuracy(), MotionFaithfulness()
    accuracy.update(videos, list(prompts))
    motion.update(videos)
    scores = {f"prompt_accuracy_{k}": float(v) for k, v in accuracy.compute().items()}
    return scores | {f"motion_{k}": float(v) for k, v in motion.compute().items()}
