"""The networks: `UNetModel` (diffusers' UNet2DModel, with the DDPM paper's architectures as
presets) and `MLPModel` (a residual MLP for low-dimensional data such as the 2-D Swiss
roll). Both follow diffusers' model interface — `model(sample, timestep).sample` — and save
diffusers' files: config.json and diffusion_pytorch_model.safetensors."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils import BaseOutput
from torch import nn

from . import hub


def _not_an_empty_float32_list(record: logging.LogRecord) -> bool:
    """False for diffusers' warning on `model.to(dtype)` that names no module ("should be kept
    in float32: []"): it warns of nothing, and these models keep no module in float32."""
    return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_not_an_empty_float32_list)


class PretrainedMixin(hub.PushToHubMixin):
    """Loading, saving and publishing for our models: safetensors only, strict (missing or
    unexpected weights are an error), atomic saves, push to the Hub with a model card."""

    config_name = "config.json"
    _config_class_names: tuple[str, ...]  # the config.json `_class_name`s a class loads

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        torch_dtype: torch.dtype | None = None,
    ):
        """Load from a local folder or a Hub repo id (at `revision`), in eval mode."""
        folder = hub.resolve_folder(
            pretrained_model_name_or_path,
            subfolder=subfolder,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            required=(cls.config_name, hub.WEIGHTS_NAME),
        )
        model = cls.from_config(hub.read_config(folder / cls.config_name, cls._config_class_names))
        hub.load_weights(model, folder)
        return model.to(dtype=torch_dtype).eval() if torch_dtype else model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write config.json and diffusion_pytorch_model.safetensors, atomically."""
        hub.save_atomically(
            lambda tmp: ModelMixin.save_pretrained(self, tmp, safe_serialization=True), save_directory
        )

    def _model_card(self, repo_id: str) -> str:
        return hub.model_card(repo_id, type(self).__name__, images=isinstance(self, UNet2DModel))


# ---- UNet ------------------------------------------------------------------------------------

# The DDPM paper's architectures (Ho et al. 2020, Appendix B) in diffusers' UNet2DModel terms,
# as in google/ddpm-cifar10-32 and google/ddpm-church-256, and small ones for tests and CPUs.
_DDPM_UNET = dict(
    layers_per_block=2,
    freq_shift=1,
    flip_sin_to_cos=False,
    downsample_padding=0,
    norm_eps=1e-6,
    attention_head_dim=None,
)
UNET_PRESETS: dict[str, dict[str, Any]] = {
    # CIFAR-10 32×32: 35.7M parameters; channels 128·(1,2,2,2), attention at 16×16, dropout 0.1.
    "ddpm-cifar10-32": dict(
        _DDPM_UNET,
        sample_size=32,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        dropout=0.1,
    ),
    # LSUN / CelebA-HQ 256×256: 114M parameters; channels 128·(1,1,2,2,4,4), attention at 16×16.
    "ddpm-256": dict(
        _DDPM_UNET,
        sample_size=256,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    ),
    # 32×32 RGB, 1.1M parameters: CPU runs and benchmarks.
    "small-32": dict(
        _DDPM_UNET,
        sample_size=32,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=16,
    ),
    # 8×8 grey (scikit-learn's digits), 0.7M parameters (2.8 MB): tests and the shipped model.
    "tiny-8": dict(
        _DDPM_UNET,
        sample_size=8,
        in_channels=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    ),
}


class UNetModel(PretrainedMixin, UNet2DModel):
    """diffusers' UNet2DModel — same constructor, same files — with named presets.

    `UNetModel.from_preset("ddpm-cifar10-32", learned_variance=True)` builds the DDPM
    paper's CIFAR-10 network with twice the output channels, the second half being the
    variance input of `variance_type="learned"` or `"learned_range"`.
    """

    _config_class_names = ("UNet2DModel", "UNetModel")

    @classmethod
    def from_preset(cls, name: str, *, learned_variance: bool = False, **overrides: Any) -> UNetModel:
        """A new, randomly initialised UNet from `UNET_PRESETS[name]`; `overrides` replace
        any of its UNet2DModel arguments (e.g. `in_channels=1`, `sample_size=64`)."""
        if name not in UNET_PRESETS:
            raise ValueError(f"preset={name!r} is not known; allowed values: {tuple(UNET_PRESETS)}")
        kwargs = {**UNET_PRESETS[name], **overrides}
        in_channels = kwargs.setdefault("in_channels", 3)
        if learned_variance:
            if kwargs.get("out_channels", 2 * in_channels) != 2 * in_channels:
                raise ValueError(
                    f"learned_variance=True needs out_channels={2 * in_channels} (twice in_channels), "
                    f"not out_channels={kwargs['out_channels']}"
                )
            kwargs["out_channels"] = 2 * in_channels
        kwargs.setdefault("out_channels", in_channels)
        return cls(**kwargs)

    def to_json_string(self) -> str:
        """The config as diffusers' UNet2DModel writes it (its `_class_name`), so that the
        saved files are exactly diffusers' own."""
        config = json.loads(super().to_json_string())
        config["_class_name"] = UNet2DModel.__name__
        return json.dumps(config, indent=2, sort_keys=True) + "\n"


# ---- MLP -------------------------------------------------------------------------------------


@dataclass
class MLPOutput(BaseOutput):
    sample: torch.Tensor  # (B, out_features)


class _ResidualBlock(nn.Module):
    """h + W₂ SiLU(W₁ SiLU(LayerNorm h) + E emb): a pre-norm residual block whose hidden
    layer is shifted by the time embedding, as a UNet's ResnetBlock2D is."""

    def __init__(self, width: int, embedding_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.time_proj = nn.Linear(embedding_dim, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # (B, W), (B or 1, E)
        return h + self.fc2(F.silu(self.fc1(F.silu(self.norm(h))) + self.time_proj(emb)))


class MLPModel(PretrainedMixin, ModelMixin, ConfigMixin):
    """A residual MLP with a sinusoidal time embedding, for points of `in_features`
    dimensions: `model(sample (B, in_features), timestep).sample` is (B, out_features).

    `out_features` defaults to `in_features`; give `2 * in_features` for a learned
    variance. A timestep shared by the batch (an int or 0-d tensor) is embedded once and
    broadcast, so a large batch pays for one embedding, not B.
    """

    _config_class_names = ("MLPModel",)

    @register_to_config
    def __init__(
        self,
        in_features: int = 2,
        out_features: int | None = None,
        hidden_features: int = 128,
        num_blocks: int = 3,
        time_embedding_dim: int = 64,
    ):
        super().__init__()
        for name, value in dict(
            in_features=in_features, hidden_features=hidden_features, num_blocks=num_blocks
        ).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if time_embedding_dim < 2 or time_embedding_dim % 2:
            raise ValueError(f"time_embedding_dim={time_embedding_dim!r} must be an even integer ≥ 2")
        self.out_features = out_features or in_features
        self.time_sinusoid = Timesteps(time_embedding_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(time_embedding_dim, 4 * time_embedding_dim)
        self.proj_in = nn.Linear(in_features, hidden_features)
        self.blocks = nn.ModuleList(
            [_ResidualBlock(hidden_features, 4 * time_embedding_dim) for _ in range(num_blocks)]
        )
        self.norm_out = nn.LayerNorm(hidden_features)
        self.proj_out = nn.Linear(hidden_features, self.out_features)

    def forward(
        self, sample: torch.Tensor, timestep: int | torch.Tensor, return_dict: bool = True
    ) -> MLPOutput | tuple[torch.Tensor]:
        if sample.dim() != 2 or sample.shape[1] != self.config.in_features:
            raise ValueError(
                f"sample has shape {tuple(sample.shape)}; MLPModel needs (batch, {self.config.in_features})"
            )
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1)  # (1,) or (B,)
        emb = self.time_embedding(self.time_sinusoid(t).to(sample.dtype))  # (1 or B, 4·E)
        emb = F.silu(emb)
        h = self.proj_in(sample)  # (B, W)
        for block in self.blocks:
            h = block(h, emb)
        out = self.proj_out(F.silu(self.norm_out(h)))  # (B, out_features)
        return MLPOutput(sample=out) if return_dict else (out,)
