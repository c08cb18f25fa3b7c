"""What a run leaves behind is true after `--resume` (issue 14): the model card's time and
loss, the metrics (each step once), the options (the checkpoint's, unless allowed to
change), no leftovers of interrupted saves, a truncated checkpoint skipped by name, and a
full disk reported in one line."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from test_training import _cli, _config, _flags

from ddpm_pipelines import checkpoints, cli, training
from ddpm_pipelines.training import TrainingError, train


def _card_line(run: Path) -> str:
    """The card's line of steps, batch, time and final loss."""
    card = (run / "pipeline" / "README.md").read_text()
    return next(line for line in card.splitlines() if " steps of batch " in line)


def _minutes_and_loss(run: Path) -> tuple[float, str]:
    """The card's training time in minutes and its final loss (as written)."""
    found = re.search(r"steps of batch \d+, ([\d.]+) minutes .*; final loss (\S+)$", _card_line(run))
    return float(found.group(1)), found.group(2)


def _logged_steps(run: Path, complete_only: bool = False) -> list[int]:
    """The steps in metrics.jsonl; with `complete_only`, of the lines a kill did not cut short."""
    text = (run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").exists() else ""
    lines = text.split("\n")[:-1] if complete_only else text.splitlines()
    return [json.loads(line)["step"] for line in lines]


def test_the_card_keeps_the_runs_time_and_loss_across_resumes(tmp_path):
    """Resuming a finished run (as after a failed final save) writes the card it had, not
    "0.0 minutes … final loss nan"; a resumed run's time is the sum of its parts."""
    config = _config(tmp_path, max_steps=10, checkpoint_every=5)
    first = train(config)
    minutes, loss = _minutes_and_loss(Path(config.output_dir))
    again = train(_config(tmp_path, max_steps=10, checkpoint_every=5, resume=True))
    assert again.final_loss == first.final_loss and again.seconds == pytest.approx(first.seconds, abs=1)
    resumed_minutes, resumed_loss = _minutes_and_loss(Path(config.output_dir))
    assert resumed_loss == loss and abs(resumed_minutes - minutes) <= 0.1  # a rounding apart at most

    state_file = Path(config.output_dir) / "checkpoints" / "step-00000010" / "state.json"
    state = json.loads(state_file.read_text())
    state["seconds"] = 6000.0  # as if the first ten steps had taken 100 minutes
    state_file.write_text(json.dumps(state))
    longer = train(_config(tmp_path, max_steps=15, checkpoint_every=5, resume=True))
    minutes, _ = _minutes_and_loss(Path(config.output_dir))
    assert 100 <= minutes < 101 and 6000 <= longer.seconds < 6060


def test_a_local_card_names_the_pipeline_folder_and_a_pushed_one_the_repo(tmp_path, monkeypatch):
    local = train(_config(tmp_path, "local", max_steps=2)).pipeline_dir
    card = (local / "README.md").read_text()
    assert f"\n# {local}\n" in card and f'from_pretrained("{local}")' in card

    monkeypatch.setattr(training.hub, "push_folder", lambda *args, **kwargs: None)
    pushed = train(_config(tmp_path, "pushed", max_steps=2, push_to_hub="someone/run")).pipeline_dir
    card = (pushed / "README.md").read_text()
    assert "\n# someone/run\n" in card and 'from_pretrained("someone/run")' in card


def test_after_a_kill_and_resume_the_metrics_hold_each_step_once(tmp_path):
    """The killed run logged steps past its last checkpoint; the resumed run logs them again.
    metrics.jsonl ends as an uninterrupted run's: each step once, in order."""
    options = dict(max_steps=100, checkpoint_every=40, log_every=5)
    whole = _cli("train", *_flags(tmp_path / "whole", **options), stderr=subprocess.DEVNULL)
    out = tmp_path / "killed"
    killed = _cli("train", *_flags(out, **options), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while killed.poll() is None:  # kill it once it has logged past its newest checkpoint
        assert time.monotonic() < deadline, "no metrics past a checkpoint within 2 minutes"
        newest = checkpoints.checkpoint_dirs(out)
        steps = _logged_steps(out, complete_only=True) if newest else []
        if steps and steps[-1] > int(newest[-1].name.removeprefix("step-")):
            break
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    newest = int(checkpoints.checkpoint_dirs(out)[-1].name.removeprefix("step-"))
    assert _logged_steps(out, complete_only=True)[-1] > newest  # the killed run's rows past it

    resumed = _cli("train", *_flags(out, resume=True, **options), stderr=subprocess.PIPE)
    assert resumed.wait() == 0, resumed.stderr.read().decode()[-2000:]
    assert whole.wait() == 0
    assert _logged_steps(out) == _logged_steps(tmp_path / "whole") == list(range(5, 101, 5))


def test_resume_refuses_options_that_change_what_is_computed_unless_allowed(tmp_path):
    train(_config(tmp_path, max_steps=4))
    with pytest.raises(TrainingError) as caught:
        train(_config(tmp_path, max_steps=8, resume=True, batch_size=64, seed=1, loss="vlb"))
    message = str(caught.value)
    for part in (
        "batch_size: 32 in the checkpoint, 64 now",
        "seed: 0 in the checkpoint, 1 now",
        "loss: 'simple' in the checkpoint, 'vlb' now",
        "--allow-changed-options",
        "max_steps",
    ):
        assert part in message, (part, message)
    assert "learning_rate" not in message
    # How far, how often to log, sample and save, and with what workers may change ...
    options = dict(max_steps=6, log_every=1, checkpoint_every=3, keep_checkpoints=1, num_workers=0)
    assert train(_config(tmp_path, resume=True, **options)).steps == 6
    # ... and the rest with the override, on the command line as well.
    changed = _config(tmp_path, max_steps=8, resume=True, learning_rate=1e-2, allow_changed_options=True)
    assert train(changed).steps == 8
    args = cli._parser().parse_args(["train", "--output-dir", "x", "--allow-changed-options"])
    assert args.allow_changed_options is True


def test_leftovers_of_interrupted_saves_and_deletions_are_removed(tmp_path):
    """Kills during a checkpoint's save (its staging folder), a deletion (a renamed or a
    half-deleted folder) and a pipeline's save leave folders that the next run removes;
    keep_checkpoints counts complete checkpoints only."""
    config = _config(tmp_path, max_steps=20, checkpoint_every=10, keep_checkpoints=3)
    train(config)
    out = Path(config.output_dir)
    root = out / "checkpoints"
    for leftover in (".step-00000030.x1y2z3", ".step-00000005.deleting", ".pipeline.saving-abc"):
        folder = (out if "pipeline" in leftover else root) / leftover
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    half = root / "step-00000015"  # rmtree killed mid-way: state.json is left, the weights are gone
    half.mkdir()
    (half / "state.json").write_text((root / "step-00000010" / "state.json").read_text())
    (out / "pipeline" / ".README.md.abc.tmp").write_text("partial")

    train(_config(tmp_path, max_steps=30, checkpoint_every=10, keep_checkpoints=3, resume=True))
    assert sorted(p.name for p in root.iterdir()) == ["step-00000010", "step-00000020", "step-00000030"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert not [p.name for p in (out / "pipeline").iterdir() if p.name.startswith(".")]

    # A run killed while it saved its first checkpoint: a fresh run removes what it left.
    fresh = tmp_path / "fresh" / "checkpoints" / ".step-00000010.abc"
    fresh.mkdir(parents=True)
    train(_config(tmp_path, "fresh", max_steps=2))
    assert sorted(p.name for p in fresh.parent.iterdir()) == ["step-00000002"]


def test_a_truncated_newest_checkpoint_is_named_and_the_one_before_resumes(tmp_path, caplog):
    options = dict(checkpoint_every=10, lr_schedule="constant")
    train(_config(tmp_path, "whole", max_steps=40, **options))
    train(_config(tmp_path, max_steps=30, **options))
    broken = tmp_path / "run" / "checkpoints" / "step-00000030" / "model.safetensors"
    broken.write_bytes(broken.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="ddpm_pipelines.training"):
        train(_config(tmp_path, max_steps=40, resume=True, **options))
    (warning,) = [
        r.getMessage()
        for r in caplog.records
        if r.name == "ddpm_pipelines.training" and r.levelno == logging.WARNING
    ]
    assert str(broken) in warning and "resuming from" in warning and "step-00000020" in warning
    for name in ("model.safetensors", "optimizer.safetensors", "state.safetensors"):
        a = safetensors.torch.load_file(tmp_path / "whole" / "checkpoints" / "step-00000040" / name)
        b = safetensors.torch.load_file(tmp_path / "run" / "checkpoints" / "step-00000040" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_a_truncated_only_checkpoint_is_an_error_naming_the_file(tmp_path):
    train(_config(tmp_path, max_steps=2))
    broken = tmp_path / "run" / "checkpoints" / "step-00000002" / "optimizer.safetensors"
    broken.write_bytes(b"")
    with pytest.raises(TrainingError, match=re.escape(f"cannot read the checkpoint file {broken}")):
        train(_config(tmp_path, max_steps=4, resume=True))


def _no_space_in_python(monkeypatch, path: Path) -> None:
    def full(*args, **kwargs):  # what Python's own writes raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoints, "_write_text", full)


def _no_space_in_safetensors(monkeypatch, path: Path) -> None:
    def full(*args, **kwargs):  # what safetensors' writer raises (not an OSError)
        raise safetensors.SafetensorError(
            f'Error while serializing: I/O error: No space left on device (os error 28) at path "{path}"'
        )

    monkeypatch.setattr(checkpoints.safetensors.torch, "save_file", full)


@pytest.mark.parametrize("writer", [_no_space_in_python, _no_space_in_safetensors])
def test_a_full_disk_while_saving_a_checkpoint_is_one_line_naming_it(tmp_path, monkeypatch, capsys, writer):
    out = tmp_path / "run"
    assert cli.main(["train", *_flags(out, max_steps=10, checkpoint_every=5)]) == 0
    before = {p.name: (p / "model.safetensors").read_bytes() for p in checkpoints.checkpoint_dirs(out)}
    capsys.readouterr()
    writer(monkeypatch, out / "checkpoints" / ".step-00000015.abc" / "model.safetensors")
    assert cli.main(["train", *_flags(out, max_steps=20, checkpoint_every=5, resume=True)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert line.startswith("ddpm-pipelines train: error: ")
    assert str(out / "checkpoints" / "step-00000015") in line and "no space left on device" in line
    after = {p.name: (p / "model.safetensors").read_bytes() for p in checkpoints.checkpoint_dirs(out)}
    assert after == before
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(before)
