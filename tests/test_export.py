"""Student export (plain diffusers reproduces the student) and the sampling / export CLIs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler

from avdm.losses.denoising import DenoisingLoss
from avdm.training.distillation import DistillationModule

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
PROMPTS = ["a red ball moving left", "a blue box moving up"]
# Both sides run the same float32 ops on the same weights and noise; they differ only in how
# alphas_cumprod is built (avdm: float64 cumprod cast to float32; diffusers: float32 cumprod, ~1e-6
# relative) and in c_skip ~ 1e-9 / c_out == 1 of LCM's boundary condition, so 1e-4 is ample.
ATOL = 1e-4

# Runs in a clean interpreter that never imports avdm.
PLAIN_DIFFUSERS = textwrap.dedent(
    """
    import json, sys
    import torch
    from diffusers import AnimateDiffPipeline, AutoencoderKL, LCMScheduler, UNetMotionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder, inputs, out = sys.argv[1:4]
    data = torch.load(inputs)
    unet = UNetMotionModel.from_pretrained(folder, subfolder="unet")
    scheduler = LCMScheduler.from_pretrained(folder, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    AutoencoderKL.from_pretrained(folder, subfolder="vae")
    ids = tokenizer(data["prompts"], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        # UNetMotionModel folds frames into the batch: text embeddings repeat per frame (B * F, L, D).
        text = text_encoder(ids)[0].repeat_interleave(data["z"].shape[2], dim=0)
        g = torch.Generator().manual_seed(data["seed"])
        x = data["z"].clone()
        scheduler.set_timesteps(**json.load(open(folder + "/avdm_export.json"))["set_timesteps"])
        for t in scheduler.timesteps:
            eps = unet(x, t, encoder_hidden_states=text).sample
            x = scheduler.step(eps, t, x, generator=g).prev_sample
        pipe = AnimateDiffPipeline.from_pretrained(folder)
        b, c, f, h, w = data["z"].shape
        vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        piped = pipe(data["prompts"], num_frames=f, height=h * vae_scale, width=w * vae_scale,
                     num_inference_steps=len(data["ladder"]), guidance_scale=1.0, latents=data["z"].clone(),
                     generator=torch.Generator().manual_seed(data["seed"]), output_type="latent").frames
    assert "avdm" not in sys.modules, "the export must load without avdm"
    torch.save({"loop": x, "pipeline": piped, "timesteps": scheduler.timesteps.tolist()}, out)
    """
)


def _run_without_avdm(script: str, folder: Path, inputs: dict, tmp_path: Path) -> dict:
    """Run ``script FOLDER in.pt out.pt`` in a clean interpreter (it never imports avdm); its outputs."""
    torch.save(inputs, tmp_path / "in.pt")
    (tmp_path / "plain.py").write_text(script)
    proc = subprocess.run(
        [sys.executable, "plain.py", str(folder), "in.pt", "out.pt"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / "out.pt")


def _student(bundle, renoise: str = "fresh", seed: int = 0) -> DistillationModule:
    torch.manual_seed(seed)
    module = DistillationModule(bundle, {"denoising": DenoisingLoss()}, generator_renoise=renoise).eval()
    with torch.no_grad():  # a student that differs from its teacher
        for p in module.generator.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return module


def test_plain_diffusers_reproduces_the_fresh_noise_student(tiny_bundle, tmp_path):
    from avdm.export import export_student

    module = _student(tiny_bundle)
    folder = export_student(module, tmp_path / "student")
    info = json.loads((folder / "avdm_export.json").read_text())
    assert info["ladder"] == [999, 749, 499, 249] and info["scheduler"] == "LCMScheduler"
    assert info["set_timesteps"] == {"num_inference_steps": 4}
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= {p.name for p in folder.iterdir()}

    seed = 7
    z = torch.randn((len(PROMPTS), *module.latent_shape), generator=torch.Generator().manual_seed(123))
    inputs = {"z": z, "seed": seed, "prompts": PROMPTS, "ladder": info["ladder"]}
    plain = _run_without_avdm(PLAIN_DIFFUSERS, folder, inputs, tmp_path)
    assert plain["timesteps"] == [999, 749, 499, 249]

    text = module.prompt_encoder(PROMPTS)
    ours = module.generator.sample(z, text, generator=torch.Generator().manual_seed(seed))
    # The re-noise draws matter: a different noise stream gives a clearly different sample.
    other = module.generator.sample(z, text, generator=torch.Generator().manual_seed(seed + 1))
    assert (ours - other).abs().max() > 100 * ATOL
    print("max |plain - avdm|:", float((plain["loop"] - ours).abs().max()), "scale:", float(ours.abs().max()))
    torch.testing.assert_close(plain["loop"], ours, atol=ATOL, rtol=0)
    torch.testing.assert_close(plain["pipeline"], ours, atol=ATOL, rtol=0)


def test_deterministic_student_exports_as_trailing_ddim(tiny_bundle, tmp_path):
    from avdm.export.schedulers import student_scheduler

    module = _student(tiny_bundle, renoise="deterministic")
    scheduler, call = student_scheduler(module.generator)
    assert isinstance(scheduler, DDIMScheduler)
    z = torch.randn((1, *module.latent_shape))
    text = module.prompt_encoder(PROMPTS[:1])
    unet = module.generator.denoiser.model
    scheduler.set_timesteps(**call)
    x = z.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(x, t, encoder_hidden_states=text.repeat_interleave(z.shape[2], dim=0)).sample
            x = scheduler.step(eps, t, x).prev_sample
    torch.testing.assert_close(x, module.generator.sample(z, text), atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run dir after one generator step of avdm2_tiny: checkpoints/last.ckpt and .hydra/config.yaml."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from avdm.config import CONFIG_DIR
    from avdm.training.fit import fit

    run = tmp_path_factory.mktemp("run")
    overrides = [
        "+experiment=avdm2_tiny",
        f"paths.output_dir={run}",
        "trainer.max_steps=1",
        "trainer.enable_progress_bar=false",
        "callbacks.checkpoint.every_n_train_steps=1",
        "~callbacks.samples",
        "module.ema_decay=0.9",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml", resolve=False)
    fit(cfg)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    return run


def test_sample_cli_writes_student_videos(trained_run, tmp_path):
    out = tmp_path / "samples"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "avdm.sample",
            str(trained_run / "checkpoints" / "last.ckpt"),
            "--prompts",
            *PROMPTS,
            "--steps",
            "2",
            "--seed",
            "0",
            "--out",
            str(out),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(p.name for p in out.glob("*.mp4"))
    assert written == ["00_a_red_ball_moving_left.mp4", "01_a_blue_box_moving_up.mp4", "grid.mp4"]
    assert all((out / name).stat().st_size > 0 for name in written)
    assert str(out) in proc.stdout


def test_sample_cli_teacher_and_export_cli_in_process(trained_run, tmp_path):
    from avdm.export import main as export_main
    from avdm.sample import main as sample_main
    from avdm.training.checkpointing.run_loading import load_run

    ckpt = trained_run / "checkpoints" / "last.ckpt"
    paths = sample_main(
        [
            str(ckpt),
            "--prompts",
            PROMPTS[0],
            "--teacher",
            "--steps",
            "2",
            "--guidance",
            "2",
            "--out",
            str(tmp_path / "teacher"),
        ]
    )
    assert [p.name for p in paths] == ["00_a_red_ball_moving_left.mp4", "grid.mp4"]

    export_main([str(ckpt), str(tmp_path / "export")])
    info = json.loads((tmp_path / "export" / "avdm_export.json").read_text())
    assert info["weights"] == "ema" and info["generator_steps"] == 1
    run = load_run(ckpt)  # the checkpoint's EMA weights are what was exported
    from diffusers import UNetMotionModel

    unet = UNetMotionModel.from_pretrained(tmp_path / "export", subfolder="unet")
    ema = run.module.generator_ema.module.denoiser.model.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in unet.state_dict().items())


def test_clis_report_a_missing_run_config_in_one_line(tmp_path, capsys):
    from avdm.sample import main as sample_main

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        sample_main([str(ckpt), "--prompts", "a red ball"])
    assert exc.value.code == 2
    assert "No run config" in capsys.readouterr().err


# Runs in a clean interpreter that never imports avdm: the README loop of a flow student's export.
PLAIN_FLOW = textwrap.dedent(
    """
    import json, sys
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import AutoTokenizer, CLIPTextModel

    folder, inputs, out = sys.argv[1:4]
    data = torch.load(inputs)
    info = json.load(open(folder + "/avdm_export.json"))
    transformer = WanTransformer3DModel.from_pretrained(folder, subfolder="transformer")
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    tokenizer = AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    AutoencoderKLWan.from_pretrained(folder, subfolder="vae")
    ids = tokenizer(data["prompts"], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        text = text_encoder(ids)[0]
        x = data["z"].clone()
        B, _, F, H, W = x.shape
        ramps = {"frame": torch.linspace(-1, 1, F).view(1, 1, F, 1, 1),
                 "y": torch.linspace(-1, 1, H).view(1, 1, 1, H, 1),
                 "x": torch.linspace(-1, 1, W).view(1, 1, 1, 1, W)}
        coords = [ramps[a].expand(B, 1, F, H, W) for a in info["position_channels"]]
        g = torch.Generator().manual_seed(data["seed"])
        scheduler.set_timesteps(**info["set_timesteps"])
        for t in scheduler.timesteps:
            v = transformer(torch.cat([x, *coords], dim=1), t.expand(B), encoder_hidden_states=text).sample
            x = scheduler.step(v, t, x, generator=g).prev_sample
    assert "avdm" not in sys.modules, "the export must load without avdm"
    torch.save({"loop": x, "timesteps": scheduler.timesteps.tolist()}, out)
    """
)


@pytest.mark.parametrize("renoise", ["fresh", "deterministic"])
def test_plain_diffusers_reproduces_a_flow_student(tmp_path, renoise):
    from avdm.export import export_student
    from avdm.models.families.wan import build_wan

    bundle = build_wan(
        source="tiny",
        num_frames=4,
        resolution=16,
        shift=3.0,
        position=["frame", "y", "x"],
        tiny={"transformer": {"num_attention_heads": 2, "attention_head_dim": 8, "ffn_dim": 32}},
    )
    torch.manual_seed(0)
    module = DistillationModule(
        bundle,
        {"denoising": DenoisingLoss()},
        generator_timesteps=(1000, 750, 500, 250),
        generator_renoise=renoise,
    ).eval()
    with torch.no_grad():
        for p in module.generator.parameters():
            p.add_(0.02 * torch.randn_like(p))
    folder = export_student(module, tmp_path / "student")
    info = json.loads((folder / "avdm_export.json").read_text())
    assert info["family"] == "flow" and info["position_channels"] == ["frame", "y", "x"]
    assert info["set_timesteps"] == {"sigmas": [1.0, 0.75, 0.5, 0.25]}
    card = (folder / "README.md").read_text()
    assert not (folder / "model_index.json").exists() and "linspace(-1, 1" in card
    assert info["diffusers_pipeline"] is None and "WanPipeline calls scheduler.set_timesteps" in card
    assert card.startswith("---\n") and "on 4-frame clips" in card

    seed = 3
    z = torch.randn((len(PROMPTS), *module.latent_shape), generator=torch.Generator().manual_seed(11))
    plain = _run_without_avdm(PLAIN_FLOW, folder, {"z": z, "seed": seed, "prompts": PROMPTS}, tmp_path)
    assert plain["timesteps"] == pytest.approx([1000.0, 750.0, 500.0, 250.0])
    text = module.prompt_encoder(PROMPTS)
    ours = module.generator.sample(z, text, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(plain["loop"], ours, atol=ATOL, rtol=0)


def test_export_has_a_model_card_with_the_trained_sizes_and_portable_sources(tiny_bundle, tmp_path):
    """The card's pipeline example, run in plain diffusers, gives the frames and size the student
    was trained on; nothing in the folder records the exporting machine's absolute paths."""
    from avdm.export import export_student

    module = _student(tiny_bundle)
    folder = export_student(module, tmp_path / "student")
    card = (folder / "README.md").read_text()
    info = json.loads((folder / "avdm_export.json").read_text())
    c, f, h, w = module.latent_shape
    height, width = info["resolution"]
    assert card.startswith("---\n") and "library_name: diffusers" in card and "- avdm" in card
    assert f"on {f}-frame clips of {height}x{width} pixels" in card and info["num_frames"] == f
    assert f"num_frames={f}, height={height}, width={width}" in card
    assert f"torch.randn(1, {c}, {f}, {h}, {w}, generator=g)" in card
    for text in (card, (folder / "avdm_export.json").read_text()):
        assert str(tmp_path) not in text and "/root/" not in text and "/home/" not in text

    example = card.split("## With the pipeline", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    script = example.replace('"THIS_FOLDER"', "sys.argv[1]") + (
        "\nimport numpy as np\nframes = np.stack([np.asarray(im) for im in video])\n"
        "torch.save({'shape': list(frames.shape)}, sys.argv[3])\n"
    )
    out = _run_without_avdm("import sys\n" + script, folder, {}, tmp_path)
    assert out["shape"] == [f, height, width, 3]


# Runs in a clean interpreter that never imports avdm: the teacher's own diffusers class plus
# `pipe.load_lora_weights(STUDENT/lora)`, on the network inputs avdm gave its generator.
PLAIN_LORA = textwrap.dedent(
    """
    import sys
    import torch
    from diffusers import AnimateDiffPipeline, WanPipeline, WanTransformer3DModel

    teacher, inputs, out = sys.argv[1:4]
    data = torch.load(inputs)
    if data["flow"]:
        transformer = WanTransformer3DModel.from_pretrained(teacher, subfolder="transformer")
        parts = dict(vae=None, text_encoder=None, tokenizer=None, scheduler=None)  # only the transformer runs
        pipe = WanPipeline(transformer=transformer, **parts)
        network = pipe.transformer
    else:
        pipe = AnimateDiffPipeline.from_pretrained(teacher)
        network = pipe.unet
    pipe.load_lora_weights(data["lora"])
    with torch.no_grad():
        y = network(data["x"], data["t"], encoder_hidden_states=data["text"]).sample
    assert "avdm" not in sys.modules, "the LoRA must load without avdm"
    torch.save({"y": y}, out)
    """
)


def _tiny_wan():
    from avdm.models.families.wan import build_wan

    return build_wan(
        source="tiny",
        num_frames=4,
        resolution=16,
        position=["frame", "y", "x"],
        tiny={"transformer": {"num_attention_heads": 2, "attention_head_dim": 8, "ffn_dim": 32}},
    )


@pytest.mark.parametrize("family", ["animatediff", "wan"])
def test_a_lora_student_exports_lora_weights_that_plain_diffusers_loads(tmp_path, family):
    """``pipe.load_lora_weights(STUDENT/lora)`` on the teacher's pipeline is the student's network (the
    adapter's alpha != rank, so a dropped scale would show)."""
    from avdm.export import export_student, export_teacher
    from avdm.models.families.animatediff import build_animatediff
    from avdm.models.lora import adapter_active
    from tests.conftest import TINY_UNET

    torch.manual_seed(0)
    if family == "wan":
        bundle = _tiny_wan()
    else:
        bundle = build_animatediff(source="tiny", num_frames=4, resolution=32, tiny={"unet": TINY_UNET})
    network = bundle.video_teacher.model
    teacher = export_teacher(
        tmp_path / "teacher",
        bundle.family,
        network,
        bundle.vae,
        bundle.prompt_encoder,
        bundle.scheduler_config,
    )
    module = DistillationModule(
        bundle, {"denoising": DenoisingLoss()}, generator_lora={"rank": 4, "alpha": 8}
    ).eval()
    generator = module.generator.denoiser
    with torch.no_grad():
        for _, p in generator.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = export_student(module, tmp_path / "student")
    info = json.loads((folder / "avdm_export.json").read_text())
    assert info["lora"]["rank"] == 4 and info["lora"]["alpha"] == 8
    assert (folder / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert "pipe.load_lora_weights(" in (folder / "README.md").read_text()

    torch.manual_seed(5)
    c, f, h, w = module.latent_shape
    extra = len(info.get("position_channels", []))
    x = torch.randn(2, c + extra, f, h, w)
    t = torch.tensor([300, 800])
    text = module.prompt_encoder(PROMPTS)
    if family == "animatediff":
        text = text.repeat_interleave(f, dim=0)  # UNetMotionModel folds frames into the batch
    with torch.no_grad(), adapter_active(network, generator.adapter):
        ours = network(x, t, encoder_hidden_states=text).sample
    with torch.no_grad():
        base = network(x, t, encoder_hidden_states=text).sample
    inputs = {"flow": family == "wan", "lora": str(folder / "lora"), "x": x, "t": t, "text": text}
    plain = _run_without_avdm(PLAIN_LORA, teacher, inputs, tmp_path)
    assert (ours - base).abs().max() > 100 * ATOL, "the adapter changes the network"
    torch.testing.assert_close(plain["y"], ours, atol=ATOL, rtol=0)
