"""Collapse diagnostics on constructed videos with known answers, the alarm on a collapsed and a healthy
generator, and the run's PNG plots."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from avdm.data.synthetic_latents import SyntheticLatentDataModule
from avdm.errors import ConfigError
from avdm.losses import DenoisingGANLoss, FrameSDMLoss
from avdm.metrics.collapse import colour_statistics, diversity, flicker, saturation, temporal_change
from avdm.training.callbacks.collapse_alarm import CollapseAlarm
from avdm.training.callbacks.diagnostics import CollapseDiagnostics, term_gradient_norms
from avdm.training.distillation import DistillationModule
from tests.conftest import cpu_trainer


def test_diversity_is_zero_for_identical_samples_and_the_rms_distance_otherwise():
    clip = torch.randn(1, 3, 4, 8, 8)
    assert float(diversity(clip.repeat(6, 1, 1, 1, 1), samples_per_prompt=3)) == 0.0
    # Prompt 0: samples c, c + 0.5, c + 1 (pairwise RMS 0.5, 1, 0.5); prompt 1: identical.
    batch = torch.cat([clip, clip + 0.5, clip + 1.0, clip, clip, clip])
    torch.testing.assert_close(diversity(batch, 3), torch.tensor((2 / 3) / 2))
    with pytest.raises(ValueError, match="samples_per_prompt=1"):
        diversity(batch, 1)


def test_temporal_change_and_flicker_of_frozen_steady_and_flashing_clips():
    frozen = torch.randn(2, 3, 1, 8, 8).repeat(1, 1, 5, 1, 1)
    assert float(temporal_change(frozen)) == 0.0 and float(flicker(frozen)) == 0.0
    ramp = torch.arange(5.0).view(1, 1, 5, 1, 1).expand(2, 3, 5, 8, 8) * 0.1  # steady motion
    torch.testing.assert_close(temporal_change(ramp), torch.tensor(0.1))
    assert float(flicker(ramp)) == pytest.approx(0.0, abs=1e-6)
    flash = torch.zeros(1, 3, 5, 4, 4)
    flash[:, :, 2] = 1.0  # one bright frame: second differences 1, 2, 1 at frames 1, 2, 3
    torch.testing.assert_close(flicker(flash), torch.tensor(4 / 3))


def test_saturation_and_colour_statistics():
    clipped = torch.randn(2, 3, 4, 8, 8).sign()  # every value at -1 or 1
    assert float(saturation(clipped)) == 1.0
    assert float(saturation(torch.zeros(2, 3, 4, 8, 8))) == 0.0
    assert float(saturation(torch.full((1, 3, 2, 2, 2), 0.5))) == 0.0
    grey = torch.rand(2, 1, 4, 8, 8).repeat(1, 3, 1, 1, 1) * 2 - 1
    stats = colour_statistics(grey)
    assert float(stats["colourfulness"]) == 0.0 and float(stats["contrast"]) > 0.1
    red = torch.full((1, 3, 2, 4, 4), -1.0)
    red[:, 0] = 1.0
    torch.testing.assert_close(
        colour_statistics(red)["colourfulness"], torch.tensor((4 / 3) ** 0.5)
    )  # unbiased std of (1, -1, -1)


def test_term_gradient_norms_are_each_terms_gradient_at_x0():
    x0 = torch.randn(2, 4, 3, 5, 5, requires_grad=True)
    w = torch.nn.Parameter(torch.ones(1))
    terms = {"double": (2 * x0).sum(), "square": (x0**2).sum(), "elsewhere": (w * 3).sum()}
    norms = term_gradient_norms(terms, x0)
    assert set(norms) == {"double", "square"}, "a term that does not act through x0 is left out"
    assert norms["double"] == pytest.approx(2 * x0.numel() ** 0.5, rel=1e-5)
    assert norms["square"] == pytest.approx(float((2 * x0).norm()), rel=1e-5)


def _module(tiny_bundle) -> DistillationModule:
    torch.manual_seed(0)
    losses = {
        "sdm": FrameSDMLoss(num_frames=2, guidance_scale=2.0),
        "gan": DenoisingGANLoss(head_channels=8, head_layers=1),
    }
    return DistillationModule(tiny_bundle, losses, generator_timesteps=(999, 499), warmup_steps=1, seed=3)


def _diagnostics() -> CollapseDiagnostics:
    return CollapseDiagnostics(every_n_steps=1, samples_per_prompt=2, teacher_steps=2, teacher_guidance=2.0)


def _fit(module, root, callbacks, max_steps: int) -> L.Trainer:
    trainer = cpu_trainer(
        root, max_steps, logger=CSVLogger(root, name="csv", version=""), callbacks=callbacks
    )
    data = SyntheticLatentDataModule(module.latent_shape, num_samples=32, batch_size=1, seed=0)
    trainer.fit(module, datamodule=data)
    return trainer


def test_the_alarm_stops_a_collapsed_generator_with_a_checkpoint_and_spares_a_healthy_one(
    tiny_bundle, tmp_path, caplog
):
    healthy, plain = _module(tiny_bundle), _module(tiny_bundle)
    diag = _diagnostics()
    alarm = CollapseAlarm(action="stop", patience=2)
    _fit(healthy, tmp_path / "healthy", [diag, alarm], max_steps=2)
    assert int(healthy.generator_steps) == 2 and len(diag.history) == 3 and not alarm.fired
    ratio = diag.latest["diag/ratio/pixel/diversity"]
    assert 0.5 < ratio < 2.0, ratio  # the student starts as the teacher
    assert sum(diag.latest[f"diag/grad_share/{k}"] for k in ("sdm", "gan")) == pytest.approx(1.0)
    assert "diag/critic/gan/logit_gap" in diag.latest and "diag/critic/sdm/fake_score_loss" in diag.latest
    # The diagnostics run under fork_rng and no_grad: the same weights as a run without them.
    _fit(plain, tmp_path / "plain", [], max_steps=2)
    for (name, p), (_, q) in zip(plain.generator.named_parameters(), healthy.generator.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)

    collapsed = _module(tiny_bundle)
    sample = collapsed.generator.sample
    # Every noise gives the same still video: the mode collapse of a generator that ignores its input.
    collapsed.generator.sample = lambda *a, **k: sample(*a, **k)[:1, :, :1].expand_as(a[0])
    alarm = CollapseAlarm(action="stop", patience=2)
    with caplog.at_level("WARNING"):
        _fit(collapsed, tmp_path / "collapsed", [_diagnostics(), alarm], max_steps=6)
    assert alarm.stopped and int(collapsed.generator_steps) == 1, "the second check in a row (patience 2)"
    messages = [r.getMessage() for r in caplog.records if "collapse" in r.getMessage()]
    assert any("lost diversity" in m and "diag/ratio/pixel/diversity=0 " in m for m in messages), messages
    assert any("static video" in m and "callbacks.collapse.min_temporal_change=0.3" in m for m in messages)
    assert all("\n" not in m for m in messages)
    saved = sorted((tmp_path / "collapsed" / "checkpoints").glob("collapse-step=*.ckpt"))
    assert len(saved) == 1 and torch.load(saved[0], weights_only=False)["state_dict"]
    assert alarm.summary()["stopped_by"] == "collapse"


def test_the_alarm_needs_the_diagnostics_and_refuses_bad_settings(tiny_bundle, tmp_path):
    with pytest.raises(ConfigError, match="callbacks.collapse needs callbacks.diagnostics"):
        _fit(_module(tiny_bundle), tmp_path, [CollapseAlarm()], max_steps=1)
    with pytest.raises(ValueError, match="callbacks.collapse.action='halt': expected one of warn, stop"):
        CollapseAlarm(action="halt")
    with pytest.raises(ValueError, match="callbacks.collapse.min_diversity=-1"):
        CollapseAlarm(min_diversity=-1)
    with pytest.raises(ValueError, match="callbacks.diagnostics.samples_per_prompt=1"):
        CollapseDiagnostics(samples_per_prompt=1)


def test_plots_of_a_run_and_the_plot_cli(tmp_path, capsys):
    from avdm.plot import main
    from avdm.training.callbacks.plots import read_curves

    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    columns = ["step", "step/generator", "gen/loss", "critic/gan/loss", "lr/generator",
               "diag/pixel/diversity", "diag/teacher/pixel/diversity"]  # fmt: skip
    with (run / "csv" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for step in range(10):
            writer.writerow({"step": step, "step/generator": step // 2, "gen/loss": 1 / (1 + step // 2),
                             "critic/gan/loss": 0.5, "lr/generator": 1e-5})  # fmt: skip
        writer.writerow({"step": 10, "step/generator": 5, "diag/pixel/diversity": 0.3,
                         "diag/teacher/pixel/diversity": 0.4})  # fmt: skip
    curves = read_curves(run / "csv" / "metrics.csv")
    assert curves["gen/loss"] == [(s, 1 / (1 + s)) for s in range(5)], (
        "a value repeated at one step is one point"
    )
    assert curves["diag/pixel/diversity"] == [(5.0, 0.3)]
    written = main([str(run)])
    assert [p.name for p in written] == ["losses.png", "diagnostics.png", "learning_rates.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert str(written[0]) in capsys.readouterr().out
    other = tmp_path / "other"
    (other / "csv").mkdir(parents=True)
    (other / "csv" / "metrics.csv").write_text(
        "step,step/generator,diag/ratio/pixel/flicker\n0,0,1.0\n4,2,1.7\n"
    )
    both = main([str(run), str(other), "--out", str(tmp_path / "both")])
    assert [p.name for p in both] == ["losses.png", "diagnostics.png", "learning_rates.png", "ratios.png"]
    with pytest.raises(SystemExit):
        main([str(run), str(other)])
    assert "--out: needed with several run folders" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "empty_dir_that_is_missing")])
    assert exc.value.code == 2
    (tmp_path / "no_csv").mkdir()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "no_csv")])
    assert "no metrics.csv" in capsys.readouterr().err
