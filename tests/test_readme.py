"""The README's quick start runs as written."""

from __future__ import annotations

import pathlib
import re

from huggingface_hub import HfApi

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs(hub, tmp_path, monkeypatch, capsys):
    """Every python block, in order; `push_to_hub` goes to the local Hub."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README has no python block"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "torch.Size([4, 2])" in out
    assert "4 torch.Size([6, 4, 1, 8, 8])" in out and "(1000, 2)" in out
    assert "analytic (1000, 2)" in out  # Analytic-DPM's block
    assert (tmp_path / "my-scheduler" / "scheduler_config.json").is_file()
    assert (tmp_path / "my-ddpm" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert "README.md" in HfApi().list_repo_files("your-name/my-ddpm")
