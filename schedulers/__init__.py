"""Schedulers holding the DDPM β/ᾱ math and reverse step rules (docs/math.md §1–4), with
diffusers' scheduler interface: they plug into diffusers' pipelines and back."""

from .base import DiffusionScheduler
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler

__all__ = ["DDIMScheduler", "DDPMScheduler", "DiffusionScheduler"]
