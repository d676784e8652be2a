"""Flow-matching transformer (Wan family) students and teachers as diffusers subfolders: ``transformer/``,
``scheduler/`` (``FlowMatchEulerDiscreteScheduler``, :func:`~avdm.export.schedulers.flow_student_scheduler`),
``text_encoder/``, ``tokenizer/``, ``vae/``, ``avdm_export.json`` and a ``README.md`` with the sampling loop
in plain diffusers. No diffusers pipeline feeds avdm's coordinate channels, nor sets a student's sigma ladder,
so there is no ``model_index.json``; the loop shows how.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from avdm.export.lora import lora_card_section, write_lora_weights
from avdm.export.model_card import finish_export, student_info, write_model_card
from avdm.export.schedulers import flow_student_scheduler
from avdm.models.lora import AdapterDenoiser, merged_network
from avdm.models.prompt_encoders import PromptEncoder
from avdm.training.distillation import DistillationModule


def export_student(module: DistillationModule, out: Path, use_ema: bool = True) -> Path:
    """Write the flow-matching transformer student of ``module`` (module docstring)."""
    generator = module.sampling_generator(use_ema)
    denoiser = generator.denoiser
    scheduler, call = flow_student_scheduler(generator)
    position = list(getattr(denoiser, "position", ()))
    info = student_info(
        module,
        generator,
        use_ema,
        family="flow",
        ladder=[float(s) for s in generator.timesteps],
        scheduler=type(scheduler).__name__,
        set_timesteps=call,
        position_channels=position,
        # Said where a user looks, instead of a model_index.json that would load and then sample wrong.
        diffusers_pipeline=None,
        why_no_pipeline=(
            "WanPipeline calls scheduler.set_timesteps(num_inference_steps) only, which cannot give this "
            "student's sigma ladder"
            + (", and it feeds no coordinate channels" if position else "")
            + "; sample with the component loop of README.md"
        ),
    )
    if isinstance(denoiser, AdapterDenoiser):
        info["lora"] = write_lora_weights(out, denoiser, WanPipeline, "transformer")
    write_flow_folder(out, merged_network(denoiser), module.prompt_encoder, scheduler, info, module.vae)
    text_class = type(module.prompt_encoder.text_encoder).__name__
    card = _card_body(info, type(module.vae).__name__, text_class) + lora_card_section(out, _lora_load_code)
    write_model_card(out, card, info)
    return out


def export_teacher(
    out: Path,
    model: torch.nn.Module,
    vae: torch.nn.Module,
    prompt_encoder: PromptEncoder,
    scheduler_config: dict[str, Any],
    info: dict[str, Any],
    include_vae: bool = True,
) -> Path:
    """A (trained) ``WanTransformer3DModel`` as the folders of a flow teacher (:func:`write_flow_folder`)."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    info = {"role": "teacher", "family": "flow", **info}
    return write_flow_folder(out, model, prompt_encoder, scheduler, info, vae if include_vae else None)


def write_flow_folder(
    out_dir: str | Path,
    transformer: torch.nn.Module,
    prompt_encoder: PromptEncoder,
    scheduler: SchedulerMixin,
    info: dict[str, Any],
    vae: torch.nn.Module | None = None,
) -> Path:
    """Write a flow-matching transformer (teacher or student) as diffusers subfolders: ``transformer/``,
    ``scheduler/``, ``text_encoder/``, ``tokenizer/``, and ``vae/`` unless ``vae`` is ``None`` (a teacher
    that reuses another folder's VAE: set ``model.pretrained.vae`` to it), plus ``avdm_export.json``
    (``info``). There is no ``model_index.json``: no diffusers pipeline runs a transformer with avdm's
    coordinate channels (``avdm_export.json`` names them)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    transformer.save_pretrained(out / "transformer", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    prompt_encoder.text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    prompt_encoder.tokenizer.save_pretrained(out / "tokenizer")
    if vae is not None:
        vae.save_pretrained(out / "vae", safe_serialization=True)
    finish_export(out, prompt_encoder, info)
    return out


def _card_body(info: dict[str, Any], vae_class: str, text_class: str) -> str:
    c, f, h, w = info["latent_shape"]
    axes = info["position_channels"]
    coords = {
        "frame": "torch.linspace(-1, 1, F).view(1, 1, F, 1, 1)",
        "y": "torch.linspace(-1, 1, H).view(1, 1, 1, H, 1)",
        "x": "torch.linspace(-1, 1, W).view(1, 1, 1, 1, W)",
    }
    feed = (
        "inputs = torch.cat([x] + [c.expand(B, 1, F, H, W) for c in coords], dim=1)" if axes else "inputs = x"
    )
    coord_lines = (
        "coords = [" + ", ".join(coords[a] for a in axes) + "]   # " + ", ".join(axes) if axes else ""
    )
    mask_note = (
        "  # UMT5 (Wan): pass attention_mask, zero the padded positions" if "UMT5" in text_class else ""
    )
    return f"""# Few-step flow video student exported by avdm

No `model_index.json`: {info["why_no_pipeline"]}.

Ladder (times t = sigma, noise to data): {info["set_timesteps"]["sigmas"]} ({info["renoise"]} re-noising
between steps). Sample without classifier-free guidance. The transformer takes {len(axes)} coordinate
channel(s) ({", ".join(axes) or "none"}) after the {c} latent channels: `linspace(-1, 1, n)` along that axis
(0 for an axis of length 1). Latents are ({c}, {f}, {h}, {w}) per clip.

```python
import torch
from diffusers import {vae_class}, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from transformers import AutoTokenizer, {text_class}

transformer = WanTransformer3DModel.from_pretrained("THIS_FOLDER", subfolder="transformer")
scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained("THIS_FOLDER", subfolder="scheduler")
tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER", subfolder="tokenizer")
text_encoder = {text_class}.from_pretrained("THIS_FOLDER", subfolder="text_encoder")
ids = tokenizer(["a red circle moving left"], padding="max_length", max_length=tokenizer.model_max_length,
                truncation=True, return_tensors="pt").input_ids
text = text_encoder(ids)[0]{mask_note}
B, F, H, W = 1, {f}, {h}, {w}
g = torch.Generator().manual_seed(0)
x = torch.randn(B, {c}, F, H, W, generator=g)
{coord_lines}
scheduler.set_timesteps(sigmas={info["set_timesteps"]["sigmas"]})
for t in scheduler.timesteps:
    {feed}
    v = transformer(inputs, t.expand(B), encoder_hidden_states=text).sample
    x = scheduler.step(v, t, x, generator=g).prev_sample   # the last step returns x0
# decode x with the VAE in vae/ (an image VAE: frame by frame, latents / vae.config.scaling_factor)
```
"""


def _lora_load_code(info: dict[str, Any]) -> str:
    from avdm.export.lora import LORA_FOLDER

    base = info["teacher_sources"].get("teacher", "TEACHER")
    return f"""transformer = WanTransformer3DModel.from_pretrained("{base}", subfolder="transformer")
pipe = WanPipeline(transformer=transformer, vae=..., text_encoder=..., tokenizer=..., scheduler=...)
pipe.load_lora_weights("THIS_FOLDER/{LORA_FOLDER}")    # pipe.transformer is now the student"""
