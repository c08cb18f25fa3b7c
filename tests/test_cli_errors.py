"""The command line's failures: one line `ddpm-pipelines <command>: error: ...` and a non-zero
exit status, no traceback unless --debug or DDPM_PIPELINES_DEBUG=1 asks for it; and its help."""

from __future__ import annotations

import argparse
import sys

import pytest
from huggingface_hub import constants

from ddpm_pipelines import cli
from ddpm_pipelines.cli import main
from ddpm_pipelines.pipeline import PRETRAINED_DIR


def test_push_while_the_hub_is_unreachable_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # HF_ENDPOINT; port 9: nothing there
    assert main(["push", str(PRETRAINED_DIR / "swiss-roll"), "someone/roll"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddpm-pipelines push: error: could not reach the Hub at http://127.0.0.1:9 (")
    assert "check the network connection and HF_ENDPOINT" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    args = ["push", str(tmp_path), "someone/x"]  # a folder with nothing saved in it
    monkeypatch.delenv("DDPM_PIPELINES_DEBUG", raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddpm-pipelines push: error: ") and len(err.splitlines()) == 1
    with pytest.raises(ValueError, match=r"holds no model_index\.json or config\.json"):
        main(["--debug", *args])
    monkeypatch.setenv("DDPM_PIPELINES_DEBUG", "1")
    with pytest.raises(ValueError, match=r"holds no model_index\.json or config\.json"):
        main(args)
    monkeypatch.setenv("DDPM_PIPELINES_DEBUG", "0")
    assert main(args) == 2


def test_a_missing_dataset_folder_is_not_found(tmp_path, capsys):
    out = ["--output-dir", str(tmp_path / "run")]
    assert main(["train", *out, "--dataset", "path/that/does/not/exist"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddpm-pipelines train: error: ") and "not found" in err
    assert "'path/that/does/not/exist'" in err and "unknown dataset" not in err


def test_a_missing_extra_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # `import sklearn.datasets` fails
    roll = str(PRETRAINED_DIR / "swiss-roll")
    assert main(["evaluate", roll, "--dataset", "swiss-roll", "--nll-examples", "0", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddpm-pipelines evaluate: error: ") and 'pip install "ddpm-pipelines[train]"' in err
    assert "Traceback" not in err


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("command", ["train", "evaluate", "sample", "push"])
def test_help_shows_every_default_and_every_option_has_help(command, capsys):
    sub = _commands()[command]
    formatter = sub._get_formatter()
    for action in sub._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{command}: {action.dest} has no help text"
        if action.option_strings and not action.required:
            shown = formatter._get_help_string(action)
            assert "default" in shown, f"{command} {action.option_strings[0]}'s help hides its default"
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit.value.code == 0
    example = {"train": "(default: 128)", "evaluate": "(default: 256)", "sample": "(default: 1000)"}
    assert example.get(command, "(default: False)") in text
