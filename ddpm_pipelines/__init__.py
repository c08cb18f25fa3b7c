"""ddpm-pipelines: DDPM models, pipelines, losses and likelihood on top of `schedulers`."""

from . import losses

__all__ = ["losses"]
