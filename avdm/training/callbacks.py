"""Lightning callbacks: sample videos of the generator during training."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from torch import Tensor

from avdm.data.visualize import frames_sheet, video_grid, write_mp4
from avdm.errors import ConfigError
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
        if every_n_steps < 0:
            raise ValueError(f"callbacks.samples.every_n_steps must be >= 0, got {every_n_steps}")
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


class IterationProgressBar(TQDMProgressBar):
    """Lightning's progress bar with the right total: ``max_steps`` counts generator steps, and each
    takes ``critic_steps_per_generator_step`` batches (iterations) of the data."""

    @property
    def total_train_batches(self) -> int | float:
        # Lightning caps an epoch at max_steps batches, which holds only with one optimizer step per batch.
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps < 0:
            return super().total_train_batches
        iterations = max_steps * getattr(self.trainer.lightning_module, "critic_every", 1)
        try:
            per_epoch = len(self.trainer.train_dataloader)
        except TypeError:  # iterable datasets have no length
            per_epoch = math.inf
        return min(per_epoch, iterations)


class ExportTeacher(L.Callback):
    """At the end of training, write the trained model as a diffusers folder (``out_dir``: an AnimateDiff
    pipeline, or a flow transformer's folders), the input of the next stage of teacher training
    (``model.pretrained.base_model=out_dir``). ``include_vae: false`` leaves out a VAE the teacher reuses
    from another folder (``model.pretrained.vae``).

    Works with any module that has ``pipeline_parts()`` (:class:`~avdm.training.module.DistillationModule`,
    :class:`~avdm.training.autoencoder.AutoencoderModule`).
    """

    def __init__(self, out_dir: str, include_vae: bool = True) -> None:
        self.out_dir, self.include_vae = Path(out_dir), include_vae

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from avdm.training.sharding import is_sharded

        if is_sharded(pl_module):  # refused before training, not after it
            raise ConfigError(
                "callbacks.export writes a teacher stage from unsharded weights at the end of training; with "
                "trainer=fsdp2 they are sharded: train teacher stages with trainer=gpu (DDP) or trainer=cpu"
            )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from avdm.training.pipeline_export import export_teacher

        parts = pl_module.pipeline_parts()
        export_teacher(self.out_dir, **parts, include_vae=self.include_vae)
        print(f"Wrote the teacher pipeline to {self.out_dir}")
