"""One frozen copy serves the video score, the 2D score and the discriminator encoder."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from avdm.models.denoiser import count_parameter_storage
from avdm.models.families.animatediff import build_animatediff, spatial_unet


def _storages(module):
    return {p.untyped_storage().data_ptr() for p in module.parameters()}


def test_image_teacher_shares_every_weight_with_the_video_teacher(tiny_bundle):
    video, image = tiny_bundle.video_teacher, tiny_bundle.image_teacher
    assert _storages(image) <= _storages(video)
    assert count_parameter_storage(video, image) == count_parameter_storage(video)
    # The motion modules are the only parameters the 2D view leaves out.
    video_only = {
        n for n, p in video.model.named_parameters() if p.untyped_storage().data_ptr() not in _storages(image)
    }
    assert video_only and all("motion_modules" in n for n in video_only)


def test_spatial_unet_computes_what_a_separate_image_unet_computes(tiny_bundle, tiny_text):
    shared = tiny_bundle.image_teacher.model
    copy = UNet2DConditionModel.from_config(shared.config)
    copy.load_state_dict(shared.state_dict())
    frames, t = torch.randn(8, 4, 16, 16), torch.full((8,), 500)
    text = tiny_text.repeat_interleave(4, 0)
    with torch.no_grad():
        torch.testing.assert_close(shared(frames, t, text).sample, copy(frames, t, text).sample)


def test_editing_the_video_teacher_changes_the_image_teacher(tiny_unet_sizes):
    bundle = build_animatediff(source="tiny", num_frames=2, resolution=16, tiny={"unet": tiny_unet_sizes})
    image_unet = spatial_unet(bundle.video_teacher.model)
    conv = bundle.video_teacher.model.down_blocks[0].resnets[0].conv1
    with torch.no_grad():
        conv.weight.add_(1.0)
    assert image_unet.down_blocks[0].resnets[0].conv1.weight is conv.weight


def test_distillation_module_holds_one_teacher_copy(tiny_bundle):
    from avdm.losses.denoising import DenoisingLoss
    from avdm.training.distillation import DistillationModule

    module = DistillationModule(tiny_bundle, {"denoising": DenoisingLoss()})
    teacher_params = sum(p.numel() for p in module.teachers.parameters())
    assert teacher_params == sum(p.numel() for p in tiny_bundle.video_teacher.parameters())
    assert not any(p.requires_grad for p in module.teachers.parameters())
    # The generator is a separate, trainable copy.
    assert not (_storages(module.generator) & _storages(module.teachers))
