"""AVDM2 training cost against the passes its math requires, and where the memory goes.

Setting: ``+experiment=avdm2_shapes`` (the shipped shapes teacher, 2D SDM with CFG + denoising GAN,
batch 4 clips of 8 frames, latents 4x8x8x8), on this machine's CPU.

**Overhead ratio.** A training iteration is timed inside Lightning (from batch start to batch end, so
data loading is excluded: it is reported by the data benchmark). Separately, each pass the math needs
is timed alone with the same shapes and the same modules:

* ``generator_forward``: one generator UNet forward without a graph (backward simulation runs ``k``);
* ``generator_forward_backward``: the generator forward with a graph and its backward;
* ``real_2d_score``: the frozen 2D teacher on ``K`` frames per clip, conditional + unconditional in one
  batch (CFG);
* ``fake_2d_score`` / ``fake_2d_score_update``: the fake score forward / forward + backward (eq. 2);
* ``disc_generator``: teacher encoder + head with a graph to the input and the backward into it;
* ``disc_critic_update``: teacher encoder on real + fake (no graph) and the head's forward + backward;
* ``optimizer_steps``: AdamW steps of the generator and the critics;
* ``vae_encode``, ``text_encode``: the real clips to latents, the captions to embeddings.

Not required by the math but done by training, and reported apart: the gradient norm (logged) and the
clipping of every update (``*_grad_norm_and_clip``); what is left of the excess is Lightning's manual
loop, logging and cache effects of running the passes back to back.

A generator iteration needs ``k`` generator forwards + the generator forward/backward + real and fake
score + the discriminator's generator pass, then the critic updates; a critic-only iteration needs
``k + 1`` generator forwards (the sample) + the critic updates; every iteration encodes its batch. ``k``
of each iteration is the module's own draw. Ratio = measured / required; 1.0 is the limit.

**Memory.** Bytes of trainable weights, gradients, AdamW state and frozen weights, by role; what sharing
one frozen teacher between the real video score, the real 2D score and the discriminator encoder
saves (two more copies otherwise); and the process's peak resident memory over the run.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch

from avdm.models.denoiser import parameter_bytes
from benchmarks.timing import IterationClock, quiet_trainer
from benchmarks.timing import timed_median as _timed

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pass_times(module, batch: dict, repeats: int) -> dict[str, float]:  # noqa: ANN001
    """Each required pass alone, with the shapes of one ``avdm2_shapes`` iteration."""
    from avdm.models.vae import encode_pixels

    sdm, gan = module.losses["sdm"], module.losses["gan"]
    latents = encode_pixels(module.vae, batch["pixels"])
    b = latents.shape[0]
    text = module.prompt_encoder(list(batch["captions"]))
    uncond = module.prompt_encoder([""]).expand(b, -1, -1)
    t = torch.full((b,), 0.5)
    gen = module.generator.denoiser
    frames = sdm.select_frames(latents)
    teacher2d, fake2d = module.teachers.image, sdm.fake_score
    cfg = sdm.guidance_scale != 1.0

    def real_2d() -> None:
        with torch.no_grad():
            if cfg:
                teacher2d(torch.cat([frames, frames]), torch.cat([t, t]), torch.cat([text, uncond]))
            else:
                teacher2d(frames, t, text)

    def fwd_bwd(model, x: torch.Tensor, cond: torch.Tensor) -> None:  # noqa: ANN001
        model(x, t, cond).float().square().mean().backward()

    def disc_generator() -> None:
        x = latents.clone().requires_grad_(True)
        gan.discriminate(module.teachers.video, x, t, text).mean().backward()

    def disc_critic() -> None:
        logits = gan.discriminate(
            module.teachers.video,
            torch.cat([latents, latents]),
            torch.cat([t, t]),
            torch.cat([text, text]),
        )
        logits.mean().backward()

    optimizers, _ = module.configure_optimizers()  # the training run's optimizers, at lr 0
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = 0.0
            for p in group["params"]:
                p.grad = torch.zeros_like(p)

    times = {
        "generator_forward": _timed(lambda: torch.no_grad()(gen)(latents, t, text), repeats),
        "generator_forward_backward": _timed(lambda: fwd_bwd(gen, latents, text), repeats),
        "real_2d_score": _timed(real_2d, repeats),
        "fake_2d_score": _timed(lambda: torch.no_grad()(fake2d)(frames, t, text), repeats),
        "fake_2d_score_update": _timed(lambda: fwd_bwd(fake2d, frames, text), repeats),
        "disc_generator": _timed(disc_generator, repeats),
        "disc_critic_update": _timed(disc_critic, repeats),
        "generator_optimizer_step": _timed(optimizers[0].step, repeats),
        "critic_optimizer_steps": _timed(lambda: [opt.step() for opt in optimizers[1:]], repeats),
        "vae_encode": _timed(lambda: encode_pixels(module.vae, batch["pixels"]), repeats),
        "text_encode": _timed(lambda: module.prompt_encoder(list(batch["captions"])), repeats),
    }

    def clip_and_norm(opts: list[torch.optim.Optimizer]) -> None:  # what _update adds per optimizer
        for opt in opts:
            params = [p for group in opt.param_groups for p in group["params"]]
            torch.nn.utils.get_total_norm([p.grad for p in params])
            torch.nn.utils.clip_grad_norm_(params, 1.0)

    times["generator_grad_norm_and_clip"] = _timed(lambda: clip_and_norm(optimizers[:1]), repeats)
    times["critic_grad_norm_and_clip"] = _timed(lambda: clip_and_norm(optimizers[1:]), repeats)
    module.zero_grad(set_to_none=True)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return times


def required(p: dict[str, float], k: int, generator_step: bool) -> tuple[float, float]:
    """Required seconds of the (generator phase, critic phase) of one iteration with simulation index k."""
    every = p["vae_encode"] + p["text_encode"]
    critic = p["fake_2d_score_update"] + p["disc_critic_update"] + p["critic_optimizer_steps"]
    if not generator_step:
        return 0.0, every + (k + 1) * p["generator_forward"] + critic
    gen = (
        k * p["generator_forward"]
        + p["generator_forward_backward"]
        + p["real_2d_score"]
        + p["fake_2d_score"]
        + p["disc_generator"]
        + p["generator_optimizer_step"]
    )
    return gen, every + critic


def bookkeeping(p: dict[str, float], generator_step: bool) -> float:
    """Seconds of work the math does not need but training does: gradient norms (logged) and clipping."""
    return p["critic_grad_norm_and_clip"] + (p["generator_grad_norm_and_clip"] if generator_step else 0.0)


def build_shapes_setting(out_dir: Path, overrides: tuple[str, ...] = ()) -> tuple[Any, Any]:
    """The ``avdm2_shapes`` module and a 120-clip shapes data module (written under ``out_dir/../.data``,
    one loader process), as ``python -m avdm.train +experiment=avdm2_shapes`` builds them."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from avdm.config import CONFIG_DIR
    from avdm.training.build import build_module

    data_root = out_dir.parent / ".data" / "shapes"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "+experiment=avdm2_shapes",
                "paths.output_dir=/tmp/avdm-bench",
                f"data.root={data_root}",
                "data.num_videos=120",
                "data.num_workers=0",
                *overrides,
            ],
        )
    torch.manual_seed(0)
    return build_module(cfg), instantiate(cfg.data)


def run(out_dir: Path, generator_steps: int = 8, repeats: int = 5) -> dict[str, Any]:
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    module, datamodule = build_shapes_setting(out_dir)
    clock = IterationClock()
    trainer = quiet_trainer(generator_steps, [clock])
    trainer.fit(module, datamodule=datamodule)
    timed = clock.rows[2:]  # warm-up
    batch = next(iter(datamodule.train_dataloader()))
    passes = pass_times(module, batch, repeats)

    phases: dict[str, dict[str, float]] = {}
    for name, gen in (("generator_iteration", True), ("critic_only_iteration", False)):
        rows = [(k, s) for g, k, s in timed if g == gen]
        measured = sum(s for _, s in rows) / len(rows)
        need = sum(sum(required(passes, k, gen)) for k, _ in rows) / len(rows)
        extra = bookkeeping(passes, gen)
        phases[name] = {
            "measured_s": measured,
            "required_s": need,
            "ratio": measured / need,
            "grad_norm_and_clip_s": extra,
            "rest_s": measured - need - extra,  # Lightning's manual loop, logging, cache effects
        }
    measured_total = sum(s for _, _, s in timed)
    required_total = sum(sum(required(passes, k, g)) for g, k, _ in timed)

    trainable = {
        "generator": parameter_bytes(module.generator.parameters()),
        "fake_2d_score": parameter_bytes(module.losses["sdm"].critic_parameters()),
        "discriminator": parameter_bytes(module.losses["gan"].critic_parameters()),
    }
    frozen = {
        "teacher (video + 2D + discriminator encoder, shared)": parameter_bytes(module.teachers.parameters()),
        "vae": parameter_bytes(module.vae.parameters()),
        "text_encoder": parameter_bytes(module.prompt_encoder.parameters()),
    }
    teacher_bytes = parameter_bytes(module.teachers.video.parameters())
    trainable_total = sum(trainable.values())
    memory = {
        "trainable_weights_mb": trainable_total / 2**20,
        "gradients_mb": trainable_total / 2**20,
        "adamw_state_mb": 2 * trainable_total / 2**20,
        "frozen_weights_mb": sum(frozen.values()) / 2**20,
        "trainable_by_role_mb": {k: v / 2**20 for k, v in trainable.items()},
        "frozen_by_role_mb": {k: v / 2**20 for k, v in frozen.items()},
        "saved_by_sharing_the_teacher_mb": 2 * teacher_bytes / 2**20,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "process_peak_rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_start) / 1024,
    }
    loader = datamodule.train_dataloader()
    began, clips = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        clips += len(batch["captions"])
        if i == 9:
            break
    loaded_per_s = clips / (time.perf_counter() - began)
    batch_size = len(batch["captions"])
    data = {
        "shapes_loader_clips_per_s_one_process": loaded_per_s,
        "training_consumes_clips_per_s": batch_size * len(timed) / measured_total,
    }
    decode = out_dir / "decode.json"
    if decode.is_file():  # OpenVid-style decoding (bench_decode): 16 frames at 512, per process
        rates = json.loads(decode.read_text())["clips_per_s"]
        data.update({f"openvid_{res}_seek_clips_per_s": v["seek"] for res, v in rates.items()})
    result = {
        "setting": "avdm2_shapes: shipped shapes teacher, 2D SDM (K=4, CFG) + denoising GAN, batch 4, "
        f"CPU threads {torch.get_num_threads()}, {len(timed)} timed iterations",
        "passes_alone_s": passes,
        "phases": phases,
        "overhead_ratio": measured_total / required_total,
        "memory": memory,
        "data": data,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "overhead.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"{result['setting']}\n",
        f"Overhead ratio (measured / required passes): **{result['overhead_ratio']:.3f}** "
        "(limit 1.0, target <= 1.10)\n",
        "| phase | measured s | required s | ratio | of the excess: grad norm + clipping s | rest s |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {n} | {v['measured_s']:.4f} | {v['required_s']:.4f} | {v['ratio']:.3f} | "
            f"{v['grad_norm_and_clip_s']:.4f} | {v['rest_s']:.4f} |"
            for n, v in phases.items()
        ),
        "\n| pass (alone) | s |",
        "| --- | --- |",
        *(f"| {n} | {v:.4f} |" for n, v in passes.items()),
        "\n| memory | MB |",
        "| --- | --- |",
        *(f"| {n} | {v:.2f} |" for n, v in memory.items() if isinstance(v, float)),
        "\n| data | clips / s |",
        "| --- | --- |",
        *(f"| {n} | {v:.2f} |" for n, v in data.items()),
    ]
    (out_dir / "overhead.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(run(Path(__file__).parent / "results"), indent=2))
