"""Data modules: synthetic latent clips now; OpenVid streaming and SynVid trajectories follow."""

from avdm.data.synthetic_latents import SyntheticLatentDataModule, SyntheticLatentDataset

__all__ = ["SyntheticLatentDataModule", "SyntheticLatentDataset"]
