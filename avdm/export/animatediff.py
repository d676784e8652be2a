"""AnimateDiff students and teachers as an ``AnimateDiffPipeline`` folder that loads without avdm::

    OUT_DIR/
      model_index.json        AnimateDiffPipeline (unet is a UNetMotionModel, no motion_adapter)
      unet/ vae/ text_encoder/ tokenizer/
      scheduler/              LCMScheduler (fresh-noise students) or DDIMScheduler (deterministic ones)
      avdm_export.json        ladder, prediction type, teacher sources, avdm version
      README.md               the exact loading / sampling calls
      lora/                   a LoRA student's adapter alone (:mod:`avdm.export.lora`)

Why the scheduler reproduces the student: :mod:`avdm.export.schedulers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from avdm.export.lora import lora_card_section, write_lora_weights
from avdm.export.model_card import finish_export, student_info, write_model_card
from avdm.export.schedulers import integer_ladder, student_scheduler
from avdm.models.lora import AdapterDenoiser, merged_network
from avdm.models.prompt_encoders import PromptEncoder
from avdm.training.distillation import DistillationModule


def export_student(module: DistillationModule, out: Path, use_ema: bool = True) -> Path:
    """Write the AnimateDiff student of ``module``; ``AnimateDiffPipeline.from_pretrained(out)`` loads it."""
    generator = module.sampling_generator(use_ema)
    scheduler, call = student_scheduler(generator)
    ladder = integer_ladder(generator)
    name = type(scheduler).__name__
    info = student_info(module, generator, use_ema, ladder=ladder, scheduler=name, set_timesteps=call)
    if isinstance(generator.denoiser, AdapterDenoiser):
        info["lora"] = write_lora_weights(out, generator.denoiser, AnimateDiffPipeline, "unet")
    write_pipeline(
        out, merged_network(generator.denoiser), module.vae, module.prompt_encoder, scheduler, info
    )
    note = "The student samples without classifier-free guidance: use `guidance_scale=1.0`."
    card = _card_body(ladder, call, name, note, info) + lora_card_section(out, _lora_load_code)
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
    """A (trained) ``UNetMotionModel`` as an AnimateDiff pipeline with its own DDIM scheduler config (the
    pipeline always holds its VAE: ``include_vae`` is for families that can leave it out)."""
    scheduler = DDIMScheduler.from_config(scheduler_config)
    return write_pipeline(out, model, vae, prompt_encoder, scheduler, {"role": "teacher", **info})


def write_pipeline(
    out_dir: str | Path,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    prompt_encoder: PromptEncoder,
    scheduler: SchedulerMixin,
    info: dict[str, Any],
) -> Path:
    """Save an ``AnimateDiffPipeline`` (``unet`` a ``UNetMotionModel``) plus ``avdm_export.json``."""
    out = Path(out_dir)
    pipe = AnimateDiffPipeline(
        vae=vae,
        text_encoder=prompt_encoder.text_encoder,
        tokenizer=prompt_encoder.tokenizer,
        unet=unet,
        motion_adapter=None,
        scheduler=scheduler,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    finish_export(out, prompt_encoder, info)
    return out


def _card_body(
    ladder: list[int], call: dict[str, Any], scheduler: str, guidance_note: str, info: dict[str, Any]
) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in call.items())
    c, f, h, w = info["latent_shape"]
    height, width = info["resolution"]
    pipe_ok = "num_inference_steps" in call
    pipeline = (
        f"""```python
import torch
from diffusers import AnimateDiffPipeline

pipe = AnimateDiffPipeline.from_pretrained("THIS_FOLDER")
video = pipe("a red circle moving left", num_frames={f}, height={height}, width={width},
             num_inference_steps={len(ladder)}, guidance_scale=1.0,
             generator=torch.Generator().manual_seed(0)).frames[0]
```
"""
        if pipe_ok
        else "The pipeline's `num_inference_steps` cannot give this ladder: use the loop below.\n"
    )
    return f"""# Few-step video student exported by avdm

Ladder (DDPM timesteps): {ladder}. Scheduler: `{scheduler}`; set it up with
`scheduler.set_timesteps({args})`. {guidance_note}

## With the pipeline

{pipeline}
## Component by component

```python
import torch
from diffusers import AutoencoderKL, {scheduler}, UNetMotionModel
from transformers import CLIPTextModel, CLIPTokenizer

unet = UNetMotionModel.from_pretrained("THIS_FOLDER", subfolder="unet")
scheduler = {scheduler}.from_pretrained("THIS_FOLDER", subfolder="scheduler")
tokenizer = CLIPTokenizer.from_pretrained("THIS_FOLDER", subfolder="tokenizer")
text_encoder = CLIPTextModel.from_pretrained("THIS_FOLDER", subfolder="text_encoder")
ids = tokenizer(["a red circle moving left"], padding="max_length",
                max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
g = torch.Generator().manual_seed(0)
x = torch.randn(1, {c}, {f}, {h}, {w}, generator=g)      # (B, C, F, H / {height // h}, W / {width // w})
text = text_encoder(ids)[0].repeat_interleave(x.shape[2], dim=0)   # one copy per frame: (B * F, L, D)
scheduler.set_timesteps({args})
for t in scheduler.timesteps:
    eps = unet(x, t, encoder_hidden_states=text).sample
    x = scheduler.step(eps, t, x, generator=g).prev_sample   # the last step returns x0
# decode x frame by frame with AutoencoderKL (latents / vae.config.scaling_factor)
```
"""


def _lora_load_code(info: dict[str, Any]) -> str:
    from avdm.export.lora import LORA_FOLDER

    sources = info["teacher_sources"]
    base, adapter = sources.get("teacher", "TEACHER"), sources.get("motion_adapter", "None")
    motion = "" if adapter == "None" else f', motion_adapter=MotionAdapter.from_pretrained("{adapter}")'
    return f"""pipe = AnimateDiffPipeline.from_pretrained("{base}"{motion})   # the teacher
pipe.load_lora_weights("THIS_FOLDER/{LORA_FOLDER}")    # pipe.unet is now the student
pipe.scheduler = {info["scheduler"]}.from_pretrained("THIS_FOLDER", subfolder="scheduler")"""
