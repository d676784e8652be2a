"""What every exported folder holds beside its weights: ``avdm_export.json`` (ladder, sources, version), the
facts about the student it states, and the Hub model card ``README.md``."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from avdm.models.generator import FewStepGenerator
from avdm.models.prompt_encoders import PromptEncoder
from avdm.models.vae import vae_factors
from avdm.training.distillation import DistillationModule


def avdm_version() -> str:
    try:
        return metadata.version("avdm")
    except metadata.PackageNotFoundError:
        return "unknown"


def pixel_frames(module: DistillationModule) -> int:
    """Frames of the student's videos: latent frames through the VAE's time factor (Wan: 1 + 4 k)."""
    time, _ = vae_factors(module.vae)
    f = module.latent_shape[1]
    return f if time == 1 else 1 + (f - 1) * time


def pixel_size(module: DistillationModule) -> list[int]:
    """``[height, width]`` in pixels of the student's videos."""
    _, space = vae_factors(module.vae)
    return [module.latent_shape[2] * space, module.latent_shape[3] * space]


def student_info(
    module: DistillationModule, generator: FewStepGenerator, use_ema: bool, **family_keys: Any
) -> dict[str, Any]:
    """The ``avdm_export.json`` entries of a student that every family writes, then ``family_keys``
    (ladder, scheduler, ...) in the place they are read from."""
    return {
        "role": "student",
        **family_keys,
        "renoise": generator.renoise,
        "prediction_type": generator.denoiser.schedule.prediction_type,
        "guidance_scale": 1.0,
        "weights": "ema" if use_ema and module.generator_ema is not None else "generator",
        "latent_shape": list(module.latent_shape),
        "teacher_sources": dict(module.sources),
        "generator_steps": int(module.generator_steps),
        "num_frames": pixel_frames(module),
        "resolution": pixel_size(module),
    }


def portable_source(source: str, out: Path) -> str:
    """A teacher source as it means something beside the export: a hub id as it is, a weight folder
    shipped with avdm as ``avdm-asset:NAME``, another local path relative to the export folder."""
    from avdm.config import ASSETS_DIR

    path = Path(source).expanduser()
    if not path.is_absolute() and not path.exists():
        return source  # a hub id ("owner/name") or a description ("tiny (random init, seed 0)")
    path = path.resolve()
    try:
        return f"avdm-asset:{path.relative_to(ASSETS_DIR.resolve()).as_posix()}"
    except ValueError:
        return os.path.relpath(path, out.resolve())


def write_model_card(out: Path, body: str, info: dict[str, Any]) -> Path:
    """``README.md``: a Hub model card (front matter by huggingface_hub's card data, tags by diffusers'
    ``populate_model_card``) stating what the student was trained on, then the loading examples."""
    from diffusers.utils.hub_utils import populate_model_card
    from huggingface_hub import ModelCard, ModelCardData

    written = json.loads((out / "avdm_export.json").read_text())  # its sources are the portable ones
    sources = written.get("teacher_sources", {})
    hub_ids = [v for v in sources.values() if v.count("/") == 1 and not v.startswith((".", "avdm-asset:"))]
    data = ModelCardData(
        library_name="diffusers", pipeline_tag="text-to-video", base_model=hub_ids[0] if hub_ids else None
    )
    height, width = info["resolution"]
    trained = (
        f"Trained by avdm for {info['generator_steps']} generator steps on {info['num_frames']}-frame clips "
        f"of {height}x{width} pixels (latents {tuple(info['latent_shape'])}); samples in "
        f"{len(info['ladder'])} steps without classifier-free guidance. Teacher: "
        + ", ".join(f"{k} `{v}`" for k, v in sources.items())
        + ". The examples below use exactly these sizes; other sizes were never trained.\n\n"
    )
    title, _, rest = body.partition("\n")
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{title}\n\n{trained}{rest.lstrip()}")
    card = populate_model_card(card, tags=["avdm", "text-to-video", "distillation", "few-step"])
    card.save(out / "README.md")
    return out / "README.md"


def finish_export(out: Path, prompt_encoder: PromptEncoder, info: dict[str, Any]) -> None:
    """Pin the saved tokenizer's length to avdm's and write ``avdm_export.json`` (sources portable)."""
    # avdm pads prompts to PromptEncoder.max_length; plain diffusers pads to tokenizer.model_max_length.
    tok_cfg_path = out / "tokenizer" / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg["model_max_length"] = prompt_encoder.max_length
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    for key in ("teacher_sources", "sources"):
        if key in info:
            info = {**info, key: {k: portable_source(str(v), out) for k, v in info[key].items()}}
    (out / "avdm_export.json").write_text(
        json.dumps({"avdm_version": avdm_version(), **info}, indent=2) + "\n"
    )
