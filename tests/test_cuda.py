"""GPU checks (marked `cuda`, skipped without a CUDA device): tables live on the sample's
device and `step` never synchronises with the host."""

from __future__ import annotations

import pytest
import torch

from schedulers import DDIMScheduler, DDPMScheduler

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_step_has_no_host_sync_and_matches_the_cpu(cls, variance_type):
    scheduler = cls(variance_type=variance_type)
    scheduler.set_timesteps(50, device="cuda")
    channels = 6 if variance_type == "learned_range" else 3
    x = torch.randn(4, 3, 8, 8, device="cuda")
    out = torch.randn(4, channels, 8, 8, device="cuda").clamp(-1, 1)
    g = torch.Generator(device="cuda").manual_seed(0)
    scheduler.step(out, scheduler.timesteps[0], x, generator=g)  # casts the tables once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in scheduler.timesteps:
            x = scheduler.step(out, t, x, generator=g).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.device.type == "cuda" and torch.isfinite(x).all()

    # Against the CPU where the step is deterministic: x̂_0 at every step, x_prev at the last.
    cpu = cls(variance_type=variance_type)
    cpu.set_timesteps(50)
    x = torch.randn(4, 3, 8, 8, device="cuda")
    for t in scheduler.timesteps:
        a = scheduler.step(out, t, x, generator=g)
        b = cpu.step(out.cpu(), int(t), x.cpu(), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(a.pred_original_sample.cpu(), b.pred_original_sample, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.prev_sample.cpu(), b.prev_sample, rtol=1e-5, atol=1e-5)


def test_training_losses_have_no_host_sync():
    from ddpm_pipelines.losses import training_losses

    scheduler = DDPMScheduler(variance_type="learned_range")
    x0 = torch.rand(8, 3, 8, 8, device="cuda") * 2 - 1
    t = torch.randint(0, 1000, (8,), device="cuda")

    def model(x_t, s):
        return torch.cat([0.5 * x_t, torch.zeros_like(x_t)], dim=1)

    training_losses(model, scheduler, x0, "hybrid", t=t)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = training_losses(model, scheduler, x0, "hybrid", t=t)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.shape == (8,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_pipeline_on_the_gpu(dtype):
    """fp32 on the GPU matches the CPU; fp16 and bf16 run the model in half precision with
    the scheduler in float32, and stay close to fp32."""
    from ddpm_pipelines import DDPMPipeline, UNetModel

    torch.manual_seed(0)
    pipe = DDPMPipeline(unet=UNetModel.from_preset("small-32").eval(), scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(batch_size=4, num_inference_steps=50, output_type="pt")
    cpu = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.to("cuda", dtype)
    assert pipe.unet.dtype == dtype and pipe.device.type == "cuda"
    dtypes = []
    gpu = pipe(
        generator=torch.Generator().manual_seed(0),
        callback=lambda i, t, x, x0: dtypes.append(x.dtype),
        **kwargs,
    ).images
    assert gpu.device.type == "cuda" and set(dtypes) == {torch.float32}
    tolerance = 1e-3 if dtype == torch.float32 else 0.1  # bf16 on the CPU: 0.016 after 50 steps
    assert (gpu.cpu() - cpu).abs().max() < tolerance


@pytest.mark.parametrize("mixed_precision", ["no", "bf16", "fp16"])
def test_training_on_the_gpu(tmp_path, mixed_precision):
    """A short run on the GPU (accelerate puts the model and data there), in each precision:
    the weights stay float32, the loss is finite, and the pipeline it saves loads."""
    from ddpm_pipelines import DDPMPipeline
    from ddpm_pipelines.training import TrainingConfig, train

    config = TrainingConfig(
        output_dir=str(tmp_path / mixed_precision),
        dataset="digits",
        model="tiny-8",
        loss="hybrid",
        max_steps=20,
        batch_size=32,
        mixed_precision=mixed_precision,
        progress=False,
    )
    result = train(config)
    assert torch.isfinite(torch.tensor(result.final_loss))
    pipe = DDPMPipeline.from_pretrained(result.pipeline_dir)
    assert pipe.unet.dtype == torch.float32
