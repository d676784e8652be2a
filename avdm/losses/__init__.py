"""Distillation objectives as plugins (see :mod:`avdm.losses.base` for the contract)."""

from avdm.losses.base import DistillationLoss, LossOutput, StepContext, TeacherBank
from avdm.losses.consistency import ConsistencyDistillationLoss
from avdm.losses.denoising import DenoisingLoss
from avdm.losses.gan import DenoisingGANLoss
from avdm.losses.sdm import FrameSDMLoss, VideoSDMLoss
from avdm.losses.trajectory import TrajectoryGANLoss, TrajectoryRegressionLoss

__all__ = [
    "ConsistencyDistillationLoss",
    "DenoisingGANLoss",
    "DenoisingLoss",
    "DistillationLoss",
    "FrameSDMLoss",
    "LossOutput",
    "StepContext",
    "TeacherBank",
    "TrajectoryGANLoss",
    "TrajectoryRegressionLoss",
    "VideoSDMLoss",
]
