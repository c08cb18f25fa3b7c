"""ddpm-pipelines: DDPM models, pipelines, losses and likelihood on top of `schedulers`.
Training (`ddpm_pipelines.training`), data and evaluation need the [train] extra."""

from . import losses
from .models import MLPModel, UNetModel
from .pipeline import PRETRAINED, DDPMPipeline, DDPMPipelineOutput, Trajectory, load_pretrained

__all__ = [
    "PRETRAINED",
    "DDPMPipeline",
    "DDPMPipelineOutput",
    "MLPModel",
    "Trajectory",
    "UNetModel",
    "load_pretrained",
    "losses",
]
