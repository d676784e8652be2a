"""Training-iteration and inference timings of the tiny AVDM2 setting (CPU), into benchmarks/results/.

Measures: seconds per generator step and per critic step of ``DistillationModule`` (2D SDM + denoising
GAN, tiny AnimateDiff teacher as in ``+experiment=avdm2_tiny``), and wall-clock sampling time of the
4-step student against the teacher's 25-step DDIM with classifier-free guidance (50 NFE).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def run(out_dir: Path, iterations: int = 6, repeats: int = 3) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from avdm.models.teacher_sampling import make_scheduler, sample_teacher
    from avdm.module import DistillationModule
    from avdm.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=avdm2_tiny", "paths.output_dir=/tmp/avdm-bench"])
    torch.manual_seed(0)
    bundle = instantiate(cfg.model)
    module = DistillationModule(bundle, {n: instantiate(c) for n, c in cfg.loss.items()}, **cfg.module)
    prompts = ["a red ball moving left", "a blue ball moving up"]
    text = bundle.prompt_encoder(prompts)
    uncond = bundle.prompt_encoder([""] * 2)
    z = torch.randn(2, *bundle.latent_shape)

    import lightning as L

    from avdm.data import SyntheticLatentDataModule

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.times: list[tuple[bool, float]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._gen = int(pl_module.iterations) % pl_module.critic_every == pl_module.critic_every - 1
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            self.times.append((self._gen, time.perf_counter() - self._t))

    clock = Clock()
    trainer = L.Trainer(
        max_steps=iterations // 2 + 1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=SyntheticLatentDataModule(bundle.latent_shape, batch_size=2))
    timed = clock.times[2:]  # drop warm-up iterations
    critic_only = [t for gen, t in timed if not gen]
    with_gen = [t for gen, t in timed if gen]

    student_s = _timed(lambda: module.sample(prompts, seed=0), repeats)
    scheduler = make_scheduler("ddim", bundle.scheduler_config)
    teacher_s = _timed(
        lambda: sample_teacher(bundle.video_teacher, scheduler, z, text, uncond, 25, 7.5), repeats
    )
    trainable = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in module.teachers.parameters())
    result = {
        "setting": f"avdm2_tiny (tiny AnimateDiff teacher, latents {list(bundle.latent_shape)}, batch 2), "
        f"CPU threads {torch.get_num_threads()}",
        "iteration_s_critic_only": sum(critic_only) / max(len(critic_only), 1),
        "iteration_s_generator_and_critic": sum(with_gen) / max(len(with_gen), 1),
        "student_4_nfe_s": student_s,
        "teacher_25_steps_cfg_50_nfe_s": teacher_s,
        "speedup_wall_clock": teacher_s / student_s,
        "speedup_nfe_limit": 50 / 4,
        "trainable_mb": trainable / 2**20,
        "frozen_teacher_mb": frozen / 2**20,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "training.json").write_text(json.dumps(result, indent=2))
    rows = "\n".join(
        f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in result.items()
    )
    (out_dir / "training.md").write_text("| measure | value |\n| --- | --- |\n" + rows + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(run(Path(__file__).parent / "results"), indent=2))
