"""ddpm-pipelines: DDPM models, pipelines, losses and likelihood on top of `schedulers`."""

from . import losses
from .models import MLPModel, UNetModel
from .pipeline import DDPMPipeline, DDPMPipelineOutput, Trajectory

__all__ = ["DDPMPipeline", "DDPMPipelineOutput", "MLPModel", "Trajectory", "UNetModel", "losses"]
