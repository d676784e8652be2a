"""Inference speedup of a 4-step student over its teacher's 25 DDIM steps with CFG (50 NFE), and where
the time goes (text encoding, the denoising loop, VAE decoding), for two models:

* the shipped shapes teacher (avdm/assets/shapes_teacher), 8 frames of 32x32, a batch of 16 prompts;
* an SD1.5-shaped AnimateDiff model (SD1.5 UNet + motion adapter v1.5 sizes, CLIP ViT-L text encoder
  sizes, SD VAE sizes) with random weights, 8 frames at 64x64 (reduced from 512: CPU), batch 1.

The student has the teacher's architecture, so its cost does not depend on its weights: the 4-step
loop runs the teacher's UNet on the student's ladder. The NFE ratio (12.5x) bounds the speedup;
text encoding and decoding are paid once by both and pull the wall-clock ratio below it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from benchmarks.timing import timed_median as _timed

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@torch.no_grad()
def measure(bundle, prompts: list[str], guidance: float, repeats: int) -> dict[str, float]:  # noqa: ANN001
    from avdm.models.generator import FewStepGenerator
    from avdm.models.sampling import make_scheduler, sample_teacher
    from avdm.models.vae import decode_latents

    text = bundle.prompt_encoder(prompts)
    uncond = bundle.prompt_encoder([""] * len(prompts))
    z = torch.randn((len(prompts), *bundle.latent_shape), generator=torch.Generator().manual_seed(0))
    student = FewStepGenerator(bundle.video_teacher, [999, 749, 499, 249], "fresh")
    scheduler = make_scheduler("ddim", bundle.scheduler_config)
    latents = student.sample(z, text)
    text_s = _timed(
        lambda: (bundle.prompt_encoder(prompts), bundle.prompt_encoder([""] * len(prompts))), repeats
    )
    teacher_s = _timed(
        lambda: sample_teacher(bundle.video_teacher, scheduler, z, text, uncond, 25, guidance), repeats
    )
    student_s = _timed(lambda: student.sample(z, text), repeats)
    decode_s = _timed(lambda: decode_latents(bundle.vae, latents), repeats)
    teacher_total = text_s + teacher_s + decode_s
    student_total = text_s + student_s + decode_s
    return {
        "batch": len(prompts),
        "text_encoding_s": text_s,
        "teacher_loop_25_steps_cfg_s": teacher_s,
        "student_loop_4_steps_s": student_s,
        "vae_decode_s": decode_s,
        "teacher_total_s": teacher_total,
        "student_total_s": student_total,
        "speedup_loop_only": teacher_s / student_s,
        "speedup_wall_clock": teacher_total / student_total,
        "speedup_nfe_limit": 50 / 4,
        "student_share_text_decode": (text_s + decode_s) / student_total,
    }


def sd15_shaped(num_frames: int, resolution: int):  # noqa: ANN201 (ModelBundle)
    """Random-weight AnimateDiff at SD1.5 sizes, built offline from configs."""
    from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from avdm.models.bundle import ModelBundle
    from avdm.models.families.animatediff import FAMILY, SD15_SCHEDULER, VideoUNetDenoiser
    from avdm.models.prompt_encoders import DEFAULT_TINY_WORDS, PromptEncoder
    from avdm.models.schedules import DDPMSchedule
    from avdm.models.tokenizer import build_word_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)  # SD1.5 defaults
    adapter = MotionAdapter(motion_max_seq_length=32)  # v1.5 sizes: (320, 640, 1280, 1280), 2 layers
    motion = UNetMotionModel.from_unet2d(unet, adapter).eval()
    del unet, adapter
    tokenizer = build_word_tokenizer(DEFAULT_TINY_WORDS, max_length=77)
    config = CLIPTextConfig(  # ViT-L/14 text tower sizes
        vocab_size=len(tokenizer),
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    prompt_encoder = PromptEncoder(tokenizer, CLIPTextModel(config).eval(), max_length=77)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        scaling_factor=0.18215,
    ).eval()
    scheduler_config = dict(DDIMScheduler(**SD15_SCHEDULER).config)
    denoiser = VideoUNetDenoiser(motion, DDPMSchedule.from_scheduler_config(scheduler_config))
    latent_shape = (4, num_frames, resolution // 8, resolution // 8)
    return ModelBundle(FAMILY, denoiser, None, prompt_encoder, vae, scheduler_config, {}, latent_shape)


def run(out_dir: Path, repeats: int = 3) -> dict[str, Any]:
    from avdm.config import asset_path
    from avdm.data.shapes import COMBINATIONS, caption
    from avdm.models.families.animatediff import build_animatediff

    torch.manual_seed(0)
    shapes = build_animatediff(
        source="pretrained",
        pretrained={
            "base_model": asset_path("shapes_teacher"),
            "motion_adapter": None,
            "local_files_only": True,
        },
        num_frames=8,
        resolution=32,
    )
    prompts = [caption(*combo) for combo in COMBINATIONS[::4]][:16]
    result: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "shapes_teacher": {
            "setting": "8 frames, 32x32 px, latents 4x8x8x8",
            **measure(shapes, prompts, 4.0, repeats),
        },
    }
    del shapes
    sd = sd15_shaped(num_frames=8, resolution=64)
    result["sd15_shaped_random"] = {
        "setting": "SD1.5 UNet + motion adapter v1.5 sizes (random weights), 8 frames, 64x64 px",
        "unet_params_m": sum(p.numel() for p in sd.video_teacher.parameters()) / 1e6,
        **measure(sd, ["a red circle moving left"], 7.5, repeats=1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "inference.json").write_text(json.dumps(result, indent=2))
    keys = [k for k in result["shapes_teacher"] if k != "setting"]
    lines = [
        "| measure | shapes teacher (shipped) | SD1.5-shaped, random |",
        "| --- | --- | --- |",
        *(
            f"| {k} | {result['shapes_teacher'][k]:.4g} | {result['sd15_shaped_random'][k]:.4g} |"
            for k in keys
        ),
    ]
    (out_dir / "inference.md").write_text(
        f"CPU threads: {result['threads']}. Shapes: {result['shapes_teacher']['setting']}. "
        f"SD1.5-shaped: {result['sd15_shaped_random']['setting']}.\n\n" + "\n".join(lines) + "\n"
    )
    return result


if __name__ == "__main__":
    print(json.dumps(run(Path(__file__).parent / "results"), indent=2))
