"""No host synchronisation on a GPU, proven on the CPU: a tensor on the "meta" device has a
shape but no data, so anything that would read a device tensor back to the host (`.item()`,
`bool(t)`, `.tolist()`, `.cpu()`, a data-dependent shape) raises there. What runs on meta
tensors from end to end therefore never waits for a GPU. `tests/test_cuda.py` checks the
same on a real GPU with `torch.cuda.set_sync_debug_mode("error")`."""

from __future__ import annotations

import pytest
import torch

from ddpm_pipelines.losses import training_losses
from schedulers import DDIMScheduler, DDPMScheduler

META = torch.device("meta")


def test_meta_tensors_refuse_host_reads():
    """The premise: each way of reading a device tensor on the host fails on meta."""
    t = torch.zeros((), device=META)
    for read in (t.item, t.tolist, t.cpu, lambda: bool(t), lambda: int(t), lambda: t.nonzero()):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


@pytest.mark.parametrize(
    "variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "learned_range", "analytic"]
)
@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_step_never_reads_device_tensors(cls, variance_type):
    gamma = {"analytic_gamma": [0.5] * 1000} if variance_type == "analytic" else {}
    scheduler = cls(variance_type=variance_type, clip_sample=True, **gamma)
    scheduler.set_timesteps(10, device=META)
    assert scheduler.timesteps.device == META
    channels = 6 if variance_type == "learned_range" else 3
    x = torch.zeros(2, 3, 4, 4, device=META)
    out = torch.zeros(2, channels, 4, 4, device=META)
    extra = {"eta": 0.5} if cls is DDIMScheduler else {}
    for t in scheduler.timesteps:  # every step, the last included
        result = scheduler.step(out, t, x, **extra)
        x = result.prev_sample
        assert x.device == META and x.shape == (2, 3, 4, 4)
        assert result.pred_original_sample.device == META


@pytest.mark.parametrize("loss_type", ["simple", "vlb", "hybrid"])
def test_training_losses_never_read_device_tensors(loss_type):
    scheduler = DDPMScheduler(variance_type="learned_range")
    x0 = torch.zeros(4, 3, 4, 4, device=META)

    def model(x_t, t):
        return torch.cat([x_t, x_t], dim=1)

    loss = training_losses(model, scheduler, x0, loss_type)  # t and noise drawn on meta too
    assert loss.device == META and loss.shape == (4,)
    noisy = scheduler.add_noise(x0, torch.zeros_like(x0), torch.zeros(4, dtype=torch.long, device=META))
    assert noisy.device == META
