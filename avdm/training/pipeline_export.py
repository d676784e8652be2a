"""Diffusers folders of a trained model (AnimateDiff or flow transformer) that load without avdm.

Writing the diffusers folders of a trained run: :func:`export_student` / :func:`export_flow_student`
(``python -m avdm.export``) and :func:`export_teacher` (the stages of teacher training) write::

    OUT_DIR/
      model_index.json        AnimateDiffPipeline (unet is a UNetMotionModel, no motion_adapter)
      unet/ vae/ text_encoder/ tokenizer/
      scheduler/              LCMScheduler (fresh-noise students) or DDIMScheduler (deterministic ones)
      avdm_export.json        ladder, prediction type, teacher sources, avdm version
      README.md               the exact loading / sampling calls

Why LCM reproduces a fresh-noise student: ``LCMScheduler.step`` predicts ``x0`` from the model output,
mixes it as ``c_out x0 + c_skip x_t`` and re-noises to the next ladder timestep with fresh noise
``sqrt(abar') x0 + sqrt(1 - abar') eps``; the final step returns ``x0``. That is exactly
:meth:`FewStepGenerator.sample` with ``renoise="fresh"`` once ``c_skip = 0, c_out = 1``, which a large
``timestep_scaling`` gives to float32 precision. A ``deterministic`` student is DDIM (eta = 0) with
``trailing`` spacing and ``set_alpha_to_one``.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AnimateDiffPipeline,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    LCMScheduler,
    WanTransformer3DModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from avdm.errors import AvdmUserError
from avdm.models.bundle import PromptEncoder
from avdm.models.generator import FewStepGenerator
from avdm.models.lora import AdapterDenoiser, adapter_config, adapter_state_dict, merged_network
from avdm.models.schedules import DDPMSchedule, FlowMatchingSchedule
from avdm.models.wan import vae_factors
from avdm.training.module import DistillationModule

# c_skip = 0.25 / ((s t)^2 + 0.25): with s = 1e4 it is < 3e-9 for every t >= 1 and c_out == 1 in float32.
TIMESTEP_SCALING = 1.0e4


class ExportError(AvdmUserError):
    """The student cannot be written as a plain diffusers pipeline."""


def avdm_version() -> str:
    try:
        return metadata.version("avdm")
    except metadata.PackageNotFoundError:
        return "unknown"


def integer_ladder(generator: FewStepGenerator) -> list[int]:
    """The student's ladder as integer DDPM timesteps, high to low; raises if it has none."""
    ladder = [int(round(s)) for s in generator.timesteps]
    if any(abs(s - r) > 1e-6 for s, r in zip(generator.timesteps, ladder)) or ladder[-1] < 1:
        raise ExportError(
            f"the generator ladder {generator.timesteps} must be integer DDPM timesteps >= 1 to export"
        )
    return ladder


def beta_config(schedule: DDPMSchedule) -> dict[str, Any]:
    """diffusers ``beta_*`` keys rebuilding ``schedule.alphas_cumprod`` (``trained_betas`` as fallback)."""
    abar = schedule.alphas_cumprod.double()
    betas = 1.0 - abar / torch.cat([abar.new_ones(1), abar[:-1]])
    for digits in range(3, 8):  # the shortest round values (0.00085, 0.012) that rebuild the schedule
        cfg: dict[str, Any] = {
            "num_train_timesteps": schedule.num_train_timesteps,
            "beta_schedule": schedule.beta_schedule,
            "beta_start": float(f"{float(betas[0]):.{digits}g}"),
            "beta_end": float(f"{float(betas[-1]):.{digits}g}"),
            "trained_betas": None,
        }
        rebuilt = DDIMScheduler(**cfg).alphas_cumprod.double()
        if torch.allclose(rebuilt, abar, rtol=1e-5, atol=1e-8):
            return cfg
    return {**cfg, "trained_betas": [float(b) for b in betas]}


def lcm_original_steps(ladder: list[int], num_train_timesteps: int) -> int | None:
    """The ``original_inference_steps`` for which ``set_timesteps(len(ladder))`` gives ``ladder``."""
    n = len(ladder)
    for original in range(n, num_train_timesteps + 1):
        k = num_train_timesteps // original
        origin = (np.arange(1, original + 1) * k - 1)[::-1]
        picked = origin[np.floor(np.linspace(0, original, num=n, endpoint=False)).astype(np.int64)]
        if picked.tolist() == ladder:
            return original
    return None


def student_scheduler(generator: FewStepGenerator) -> tuple[SchedulerMixin, dict[str, Any]]:
    """A diffusers scheduler whose ``set_timesteps`` call (also returned) reproduces the student."""
    schedule = generator.denoiser.schedule
    if not isinstance(schedule, DDPMSchedule):
        raise ExportError(f"export supports DDPM (AnimateDiff) students, not {type(schedule).__name__}")
    ladder = integer_ladder(generator)
    T = schedule.num_train_timesteps
    common = {**beta_config(schedule), "prediction_type": schedule.prediction_type, "clip_sample": False}
    if generator.renoise == "fresh":
        original = lcm_original_steps(ladder, T)
        scheduler = LCMScheduler(
            **common,
            original_inference_steps=original or T,
            timestep_scaling=TIMESTEP_SCALING,
            set_alpha_to_one=True,
            steps_offset=0,
        )
        call = {"timesteps": ladder} if original is None else {"num_inference_steps": len(ladder)}
    else:
        scheduler = DDIMScheduler(
            **common, timestep_spacing="trailing", set_alpha_to_one=True, steps_offset=0
        )
        call = {"num_inference_steps": len(ladder)}
    probe = type(scheduler).from_config(scheduler.config)
    probe.set_timesteps(**call)
    if probe.timesteps.tolist() != ladder:
        raise ExportError(
            f"no {type(scheduler).__name__} reproduces the {generator.renoise} ladder {ladder} "
            f"(it gives {probe.timesteps.tolist()})"
        )
    return scheduler, call


def _readme(
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
    _finish_export(out, prompt_encoder, info)
    return out


def pixel_frames(module: DistillationModule) -> int:
    """Frames of the student's videos: latent frames through the VAE's time factor (Wan: 1 + 4 k)."""
    time, _ = vae_factors(module.vae)
    f = module.latent_shape[1]
    return f if time == 1 else 1 + (f - 1) * time


def pixel_size(module: DistillationModule) -> list[int]:
    """``[height, width]`` in pixels of the student's videos."""
    _, space = vae_factors(module.vae)
    return [module.latent_shape[2] * space, module.latent_shape[3] * space]


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


def _finish_export(out: Path, prompt_encoder: PromptEncoder, info: dict[str, Any]) -> None:
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


def export_teacher(
    out_dir: str | Path,
    model: torch.nn.Module,
    vae: torch.nn.Module,
    prompt_encoder: PromptEncoder,
    scheduler_config: dict[str, Any],
    info: dict[str, Any] | None = None,
    include_vae: bool = True,
) -> Path:
    """Write a (trained) teacher as a diffusers folder that ``model.source=pretrained
    model.pretrained.base_model=OUT_DIR`` loads back.

    A ``UNetMotionModel`` is written as an AnimateDiff pipeline with its own DDIM scheduler config; a
    ``WanTransformer3DModel`` as the folders of a flow teacher (:func:`write_flow_folder`).
    """
    if isinstance(model, WanTransformer3DModel):
        return write_flow_folder(
            out_dir,
            model,
            prompt_encoder,
            FlowMatchEulerDiscreteScheduler.from_config(scheduler_config),
            {"role": "teacher", "family": "flow", **(info or {})},
            vae if include_vae else None,
        )
    scheduler = DDIMScheduler.from_config(scheduler_config)
    return write_pipeline(out_dir, model, vae, prompt_encoder, scheduler, {"role": "teacher", **(info or {})})


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
    _finish_export(out, prompt_encoder, info)
    return out


LORA_FOLDER = "lora"


def write_lora_weights(out: Path, denoiser: AdapterDenoiser, flow: bool) -> dict[str, Any]:
    """Write a LoRA student's adapter to ``out/lora/pytorch_lora_weights.safetensors`` with diffusers' own
    writer (its ``LoraConfig`` in the file's metadata, so ``lora_alpha != r`` loads right), for
    ``pipe.load_lora_weights(out / "lora")`` on a pipeline of the teacher. Returns the ``lora`` entry of
    ``avdm_export.json``."""
    from diffusers import WanPipeline

    state = adapter_state_dict(denoiser.model, denoiser.adapter)
    config = adapter_config(denoiser.model, denoiser.adapter)
    if flow:
        WanPipeline.save_lora_weights(
            out / LORA_FOLDER, transformer_lora_layers=state, transformer_lora_adapter_metadata=config
        )
    else:
        AnimateDiffPipeline.save_lora_weights(
            out / LORA_FOLDER, unet_lora_layers=state, unet_lora_adapter_metadata=config
        )
    return {
        "folder": LORA_FOLDER,
        "rank": config["r"],
        "alpha": config["lora_alpha"],
        "adapted_modules": len(config["target_modules"]),
        "base": "the teacher (teacher_sources)",
    }


def _lora_readme(out: Path, flow: bool) -> str:
    """The model card's section on loading the adapter onto the teacher (empty for a full student); the
    teacher named by the portable sources written in ``avdm_export.json``."""
    info = json.loads((out / "avdm_export.json").read_text())
    if "lora" not in info:
        return ""
    sources = info["teacher_sources"]
    base = sources.get("teacher", "TEACHER")
    adapter = sources.get("motion_adapter", "None")
    if flow:
        load = f"""transformer = WanTransformer3DModel.from_pretrained("{base}", subfolder="transformer")
pipe = WanPipeline(transformer=transformer, vae=..., text_encoder=..., tokenizer=..., scheduler=...)
pipe.load_lora_weights("THIS_FOLDER/{LORA_FOLDER}")    # pipe.transformer is now the student"""
    else:
        motion = "" if adapter == "None" else f', motion_adapter=MotionAdapter.from_pretrained("{adapter}")'
        load = f"""pipe = AnimateDiffPipeline.from_pretrained("{base}"{motion})   # the teacher
pipe.load_lora_weights("THIS_FOLDER/{LORA_FOLDER}")    # pipe.unet is now the student
pipe.scheduler = {info["scheduler"]}.from_pretrained("THIS_FOLDER", subfolder="scheduler")"""
    where = ""
    if base.startswith("avdm-asset:"):
        where = f"`{base}` is the folder `avdm/assets/{base.split(':', 1)[1]}` of the avdm package. "
    return f"""
## As LoRA weights on the teacher

The student is the teacher plus a rank-{info["lora"]["rank"]} LoRA (alpha {info["lora"]["alpha"]}); the
weights above have it merged, `{LORA_FOLDER}/` holds it alone:

```python
{load}
```
{where}Sample with this folder's scheduler and ladder, as above.
"""


def export_student(module: DistillationModule, out_dir: str | Path, use_ema: bool = True) -> Path:
    """Write the student of ``module`` (its EMA when kept and ``use_ema``) as a diffusers folder.

    Returns:
        ``out_dir``; ``AnimateDiffPipeline.from_pretrained(out_dir)`` loads an AnimateDiff student without
        avdm; a flow student is written as :func:`export_flow_student` describes.
    """
    out = Path(out_dir)
    ema = use_ema and module.generator_ema is not None
    generator = module.sampling_generator(use_ema)
    if module.vae is None:
        raise ExportError("the module has no VAE; a diffusers pipeline needs one")
    if isinstance(generator.denoiser.schedule, FlowMatchingSchedule):
        return export_flow_student(module, out, use_ema)
    scheduler, call = student_scheduler(generator)
    ladder = integer_ladder(generator)
    name = type(scheduler).__name__
    info = {
        "role": "student",
        "ladder": ladder,
        "renoise": generator.renoise,
        "prediction_type": generator.denoiser.schedule.prediction_type,
        "scheduler": name,
        "set_timesteps": call,
        "guidance_scale": 1.0,
        "weights": "ema" if ema else "generator",
        "latent_shape": list(module.latent_shape),
        "teacher_sources": dict(module.sources),
        "generator_steps": int(module.generator_steps),
        "num_frames": pixel_frames(module),
        "resolution": pixel_size(module),
    }
    if isinstance(generator.denoiser, AdapterDenoiser):
        info["lora"] = write_lora_weights(out, generator.denoiser, flow=False)
    write_pipeline(
        out, merged_network(generator.denoiser), module.vae, module.prompt_encoder, scheduler, info
    )
    note = "The student samples without classifier-free guidance: use `guidance_scale=1.0`."
    write_model_card(out, _readme(ladder, call, name, note, info) + _lora_readme(out, flow=False), info)
    return out


def flow_student_scheduler(
    generator: FewStepGenerator,
) -> tuple[FlowMatchEulerDiscreteScheduler, dict[str, Any]]:
    """A ``FlowMatchEulerDiscreteScheduler`` and its ``set_timesteps`` call that reproduce a flow student.

    The ladder's times are passed as ``sigmas`` with ``shift=1`` (they are already the student's times).
    A ``fresh`` student is the scheduler's ``stochastic_sampling``: ``x0 = x_t - sigma v``, re-noised to the
    next sigma with fresh noise (and ``x0`` itself after the last step); a ``deterministic`` one its plain
    Euler step, whose last step (to sigma 0) is the same ``x0``.
    """
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=generator.denoiser.schedule.num_train_timesteps,
        shift=1.0,
        stochastic_sampling=generator.renoise == "fresh",
    )
    call = {"sigmas": [float(t) for t in generator.t_values]}
    probe = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    probe.set_timesteps(**call)
    if not np.allclose(probe.sigmas[:-1].numpy(), call["sigmas"], atol=1e-6):
        raise ExportError(f"FlowMatchEulerDiscreteScheduler does not reproduce the ladder {call['sigmas']}")
    return scheduler, call


def export_flow_student(module: DistillationModule, out_dir: str | Path, use_ema: bool = True) -> Path:
    """Write a flow-matching transformer student: ``transformer/``, ``scheduler/``
    (``FlowMatchEulerDiscreteScheduler``, :func:`flow_student_scheduler`), ``text_encoder/``, ``tokenizer/``,
    ``vae/``, ``avdm_export.json`` and a ``README.md`` with the sampling loop in plain diffusers. No diffusers
    pipeline feeds avdm's coordinate channels, so there is no ``model_index.json``; the loop shows how."""
    out = Path(out_dir)
    generator = module.sampling_generator(use_ema)
    denoiser = generator.denoiser
    scheduler, call = flow_student_scheduler(generator)
    position = list(getattr(denoiser, "position", ()))
    info = {
        "role": "student",
        "family": "flow",
        "ladder": [float(s) for s in generator.timesteps],
        "renoise": generator.renoise,
        "prediction_type": denoiser.schedule.prediction_type,
        "scheduler": type(scheduler).__name__,
        "set_timesteps": call,
        "guidance_scale": 1.0,
        "position_channels": position,
        # Said where a user looks, instead of a model_index.json that would load and then sample wrong.
        "diffusers_pipeline": None,
        "why_no_pipeline": (
            "WanPipeline calls scheduler.set_timesteps(num_inference_steps) only, which cannot give this "
            "student's sigma ladder"
            + (", and it feeds no coordinate channels" if position else "")
            + "; sample with the component loop of README.md"
        ),
        "weights": "ema" if use_ema and module.generator_ema is not None else "generator",
        "latent_shape": list(module.latent_shape),
        "teacher_sources": dict(module.sources),
        "generator_steps": int(module.generator_steps),
        "num_frames": pixel_frames(module),
        "resolution": pixel_size(module),
    }
    if isinstance(denoiser, AdapterDenoiser):
        info["lora"] = write_lora_weights(out, denoiser, flow=True)
    write_flow_folder(out, merged_network(denoiser), module.prompt_encoder, scheduler, info, module.vae)
    text_class = type(module.prompt_encoder.text_encoder).__name__
    card = _flow_readme(info, type(module.vae).__name__, text_class) + _lora_readme(out, flow=True)
    write_model_card(out, card, info)
    return out


def _flow_readme(info: dict[str, Any], vae_class: str, text_class: str) -> str:
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
