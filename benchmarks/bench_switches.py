"""What each execution switch (``module.gradient_checkpointing``, ``module.channels_last``) costs and saves
on the ``avdm2_shapes`` iteration, and that it leaves the losses as they were.

Per variant: seconds of a generator iteration and of a critic-only iteration (timed inside Lightning, as
in ``bench_overhead``), the activation memory of the generator phase (bytes autograd keeps from the
generator's forward to the backward: the peak of an iteration beyond weights and optimizer state; CPU
allocators do not report peaks, so the saved tensors are counted), and the generator-phase loss of one
fixed batch, noise and ``k`` (identical for every variant).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_overhead import build_shapes_setting
from benchmarks.timing import IterationClock, quiet_trainer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "gradient_checkpointing": ("module.gradient_checkpointing=true",),
    "channels_last": ("module.channels_last=true",),
}


def generator_phase(module, batch: dict, k: int) -> tuple[float, int]:  # noqa: ANN001
    """(loss, saved activation bytes) of one generator phase on ``batch`` with simulation index ``k``."""
    from avdm.losses.base import StepContext
    from avdm.models.execution import count_saved_activations

    torch.manual_seed(0)
    batch = module.with_latents(batch)
    text, uncond = module.encode_text(batch)
    z = torch.randn((text.shape[0], *module.latent_shape))
    with count_saved_activations(module) as saved:
        x0 = module.generator.simulate(z, text, k, generator=torch.Generator().manual_seed(1)).x0
        ctx = StepContext(x0, text, batch, module.teachers, module.generator, uncond)
        total = sum(plugin.weight * plugin.generator_loss(ctx).loss for plugin in module.losses.values())
    total.backward()
    module.zero_grad(set_to_none=True)
    return float(total), saved["bytes"]


def run(out_dir: Path, generator_steps: int = 6) -> dict[str, Any]:
    results: dict[str, dict[str, float]] = {}
    for name, overrides in VARIANTS.items():
        module, datamodule = build_shapes_setting(out_dir, overrides)
        datamodule.prepare_data()
        datamodule.setup("fit")
        batch = next(iter(datamodule.train_dataloader()))
        loss, saved = generator_phase(module, batch, k=module.generator.num_steps - 1)
        clock = IterationClock()
        quiet_trainer(generator_steps, [clock]).fit(module, datamodule=datamodule)
        rows = clock.rows[2:]  # warm-up
        gen = [s for g, _, s in rows if g]
        critic = [s for g, _, s in rows if not g]
        results[name] = {
            "generator_iteration_s": sum(gen) / len(gen),
            "critic_only_iteration_s": sum(critic) / len(critic),
            "generator_phase_activations_mb": saved / 2**20,
            "generator_phase_loss": loss,
        }
    base = results["baseline"]
    for row in results.values():
        row["loss_minus_baseline"] = row["generator_phase_loss"] - base["generator_phase_loss"]
        row["generator_iteration_vs_baseline"] = row["generator_iteration_s"] / base["generator_iteration_s"]
        row["activations_vs_baseline"] = (
            row["generator_phase_activations_mb"] / base["generator_phase_activations_mb"]
        )
    result = {
        "setting": "avdm2_shapes (shipped shapes teacher, 2D SDM with CFG + denoising GAN, batch 4), "
        f"CPU threads {torch.get_num_threads()}, {generator_steps} generator steps per variant",
        "variants": results,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "switches.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"{result['setting']}\n",
        "| switch | generator iteration s | x baseline | critic-only iteration s | generator-phase "
        "activations MB | x baseline | generator-phase loss | - baseline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {n} | {r['generator_iteration_s']:.4f} | {r['generator_iteration_vs_baseline']:.3f} | "
            f"{r['critic_only_iteration_s']:.4f} | {r['generator_phase_activations_mb']:.1f} | "
            f"{r['activations_vs_baseline']:.3f} | {r['generator_phase_loss']:.6f} | "
            f"{r['loss_minus_baseline']:.2e} |"
            for n, r in results.items()
        ),
    ]
    (out_dir / "switches.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(run(Path(__file__).parent / "results"), indent=2))
