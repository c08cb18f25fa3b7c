"""The command line: `ddpm-pipelines train | evaluate | sample | push` (also `python -m
ddpm_pipelines`). `train` runs under `accelerate launch` or `torchrun` unchanged."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from . import hub, training
from .losses import LOSS_TYPES
from .pipeline import PRETRAINED, SAMPLERS, DDPMPipeline, load_pretrained, makes_points

PACKAGE_DIR = Path(__file__).resolve().parent  # evaluate never writes in here
PIPELINE_HELP = f"a pipeline folder, a Hub repo id, or one shipped with the package: {', '.join(PRETRAINED)}"

# The options of `train` with a fixed set of values (the rest take their type from the default).
CHOICES = {
    "model": training.MODELS,
    "loss": LOSS_TYPES,
    "timestep_sampler": training.TIMESTEP_SAMPLERS,
    "mixed_precision": training.MIXED_PRECISIONS,
    "lr_schedule": training.LR_SCHEDULES,
}
# Options whose default is None, by the type of their value.
OPTIONAL_TYPES = {
    "num_samples": int,
    "image_size": int,
    "variance_type": str,
    "push_to_hub": str,
    "num_workers": int,
    "random_flip": bool,
}


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainingConfig field (its help text, type and default)."""
    for f in dataclasses.fields(training.TrainingConfig):
        if f.name == "command":
            continue
        flag = "--" + f.name.replace("_", "-")
        help = f.metadata["help"]
        kind = OPTIONAL_TYPES.get(f.name) or type(f.default)
        if f.name == "output_dir":
            parser.add_argument(flag, required=True, help=help)
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help)
        elif f.name == "max_grad_norm":
            parser.add_argument(
                flag, type=_float_or_none, default=f.default, help=help + " ('none': no clipping)"
            )
        else:
            parser.add_argument(flag, type=kind, default=f.default, choices=CHOICES.get(f.name), help=help)


def _names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names from `allowed`."""

    def parse(text: str) -> list[str]:
        names = text.split(",")
        wrong = [name for name in names if name not in allowed]
        if wrong:
            raise argparse.ArgumentTypeError(f"{wrong[0]!r} is not one of {', '.join(allowed)}")
        return names

    return parse


def _counts(text: str) -> list[int]:
    """An argparse type: a comma-separated list of whole numbers ≥ 1."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers ≥ 1")
    return counts


def _float_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, "(default: 256)", unless the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-pipelines", description=__doc__, formatter_class=_HelpFormatter
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, show its traceback rather than one line (also: DDPM_PIPELINES_DEBUG=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train a DDPM (also under accelerate launch / torchrun)",
        formatter_class=_HelpFormatter,
    )
    _add_training_options(train)

    evaluate = commands.add_parser(
        "evaluate",
        help="bits/dim and sample quality of a trained pipeline, or quality against steps",
        formatter_class=_HelpFormatter,
    )
    evaluate.add_argument("pipeline", help=PIPELINE_HELP)
    evaluate.add_argument("--dataset", required=True, help="the data it was trained on (its train split)")
    evaluate.add_argument(
        "--test-dataset", default=None, help="held-out data, e.g. a folder (default: --dataset's test split)"
    )
    evaluate.add_argument("--num-samples", type=int, default=5000, help="generated samples")
    evaluate.add_argument(
        "--nll-examples", type=int, default=256, help="held-out examples for bits/dim (0: no likelihood)"
    )
    evaluate.add_argument("--batch-size", type=int, default=256, help="samples or examples at a time")
    evaluate.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize a folder's or hf: dataset's images to this (default: none; they must share one size)",
    )
    evaluate.add_argument(
        "--samples",
        default=None,
        help="a folder for the samples' .npz shards, kept: one that `sample --num-samples` filled "
        "with the same --num-samples, --seed, --sampler and --steps is read, a killed run's "
        "missing shards drawn (default: a temporary folder)",
    )
    evaluate.add_argument("--fid", action="store_true", help="FID and precision/recall in Inception features")
    evaluate.add_argument(
        "--inception-weights",
        default=None,
        help="with --fid: the Inception weights as a .safetensors file (default: torch-fidelity's, "
        "from torch.hub's cache)",
    )
    evaluate.add_argument(
        "--reference",
        default=None,
        help="with --fid: an .npz of the real side's mu and sigma (ours, pytorch-fid's or the ADM "
        "suite's), e.g. CIFAR-10's train statistics (default: the test split's)",
    )
    evaluate.add_argument(
        "--dino",
        default=None,
        help="a Dinov2Model folder or Hub id, for FD_DINOv2 and its precision/recall (default: none)",
    )
    evaluate.add_argument(
        "--statistics-dir",
        default=None,
        help="where the real images' feature statistics are kept and reused "
        "(default: $XDG_CACHE_HOME/ddpm-pipelines/statistics, ~/.cache by default)",
    )
    evaluate.add_argument(
        "--sampler",
        type=_names(SAMPLERS),
        default=None,
        help=f"one of {', '.join(SAMPLERS)}, or several with commas (default: the pipeline's own scheduler)",
    )
    evaluate.add_argument(
        "--steps",
        "--num-inference-steps",
        dest="steps",
        type=_counts,
        default=None,
        help="inference steps, or several with commas, e.g. 10,20,50,100,1000 (default: all); more "
        "than one sampler or step count writes the quality-against-steps table and plot instead",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seeds the samples and the likelihood's noise")
    evaluate.add_argument(
        "--out",
        default=None,
        help="folder for metrics.json and the plots (default: the pipeline's folder when it is a "
        "run's, else the current folder; never inside the installed package)",
    )

    sample = commands.add_parser(
        "sample",
        help="generate with a pipeline: a picture, or --num-samples of them to .npz shards",
        formatter_class=_HelpFormatter,
    )
    sample.add_argument("pipeline", help=PIPELINE_HELP)
    sample.add_argument("--out", required=True, help="a .png file; with --num-samples, a folder")
    sample.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="draw this many into .npz shards in --out, split across the processes of torchrun or "
        "accelerate launch; the same command again continues a killed run (default: one picture)",
    )
    sample.add_argument("--shard-size", type=int, default=1000, help="samples per shard (with --num-samples)")
    sample.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="samples at a time (default: 16, or 64 with --num-samples)",
    )
    sample.add_argument(
        "--steps",
        "--num-inference-steps",
        dest="steps",
        type=int,
        default=None,
        help="inference steps (default: all)",
    )
    sample.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=None,
        help=f"one of {', '.join(SAMPLERS)} (default: the pipeline's own scheduler)",
    )
    sample.add_argument(
        "--seed", type=int, default=0, help="seeds the draws (with --num-samples, sample i's is (seed, i))"
    )

    push = commands.add_parser(
        "push", help="upload a saved pipeline or model folder to the Hub", formatter_class=_HelpFormatter
    )
    push.add_argument("folder", help="a folder that save_pretrained or train wrote, e.g. runs/x/pipeline")
    push.add_argument(
        "repo_id", help="the Hub repo, user/name or org/name (created if needed; its card names it)"
    )
    push.add_argument("--private", action="store_true", help="create the repo private (a new repo only)")
    push.add_argument("--revision", default=None, help="a branch to push to (default: the main branch)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; an expected failure is one line on stderr and exit status 2, its
    traceback shown only with --debug or DDPM_PIPELINES_DEBUG=1."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args, argv)
    except (ValueError, OSError, ImportError, training.TrainingError) as error:
        if args.debug or os.environ.get("DDPM_PIPELINES_DEBUG", "") not in ("", "0"):
            raise
        print(f"ddpm-pipelines {args.command}: error: {error}", file=sys.stderr)
        return 2


def _pipeline(name: str) -> DDPMPipeline:
    """A pipeline shipped with the package by its name (PRETRAINED: these names win over a
    folder of the same name; write ./digits for that), else a folder or Hub repo id."""
    return load_pretrained(name) if name in PRETRAINED else DDPMPipeline.from_pretrained(name)


def _evaluate_out(args: argparse.Namespace) -> Path:
    """--out; by default the pipeline's folder when it is a run's, a folder outside the
    installed package, else the current folder."""
    if args.out:
        return Path(args.out)
    folder = Path(args.pipeline)
    run = args.pipeline not in PRETRAINED and folder.is_dir()
    return folder if run and not folder.resolve().is_relative_to(PACKAGE_DIR) else Path(".")


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    options = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(training.TrainingConfig)
        if f.name != "command"
    }
    config = training.TrainingConfig(**options, command="ddpm-pipelines " + shlex.join(argv))
    result = training.train(config)
    print(f"trained {result.steps} steps in {result.seconds:.0f} s; the pipeline is in {result.pipeline_dir}")
    if result.push_error:
        print(result.push_error, file=sys.stderr)
        return 1
    return 0


def _evaluate(args: argparse.Namespace, argv: list[str]) -> int:
    from . import evaluation
    from .data import load_dataset

    pipe = _pipeline(args.pipeline)
    train = load_dataset(args.dataset, "train", image_size=args.image_size, seed=args.seed)
    if args.test_dataset:
        test = load_dataset(args.test_dataset, "train", image_size=args.image_size, seed=args.seed + 1)
    else:
        test = load_dataset(args.dataset, "test", image_size=args.image_size, seed=args.seed)
    features = []
    if args.fid:
        features.append(evaluation.InceptionFeatures(args.inception_weights))
    if args.dino:
        features.append(evaluation.DINOv2Features(args.dino))
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    common = dict(
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        features=features,
        reference=evaluation.FeatureStatistics.load(args.reference) if args.reference else None,
        real_features=evaluation.RealFeatures(
            args.statistics_dir or Path(cache) / "ddpm-pipelines" / "statistics", args.batch_size
        ),
        progress=True,
    )
    out = _evaluate_out(args)
    samplers, steps = args.sampler or [None], args.steps or [None]
    if len(samplers) * len(steps) > 1:
        rows = evaluation.quality_vs_steps(
            pipe,
            train,
            test,
            samplers=samplers,
            steps=[count or pipe.scheduler.config.num_train_timesteps for count in steps],
            samples_dir=args.samples,
            **common,
        )
        hub.write_text_atomically(out / "quality_vs_steps.json", json.dumps(rows, indent=2) + "\n")
        table = evaluation.quality_table(rows)
        hub.write_text_atomically(out / "quality_vs_steps.md", table)
        evaluation.plot_quality_vs_steps(rows, out / "quality_vs_steps.png")
        print(table)
        print(f"wrote {out / 'quality_vs_steps.json'}, .md and .png")
        return 0
    if not features and not makes_points(pipe.unet):
        print(
            "skipped FID, precision/recall and FD_DINOv2: the samples of an image model are measured "
            "in a network's features (--fid: Inception, --dino: DINOv2)",
            file=sys.stderr,
        )
    metrics = evaluation.evaluate(
        pipe,
        train,
        test,
        nll_examples=args.nll_examples,
        sampler=samplers[0],
        num_inference_steps=steps[0],
        samples_dir=args.samples,
        **common,
    )
    hub.write_text_atomically(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    written = [out / "metrics.json"]
    if args.nll_examples:
        written.append(evaluation.plot_vlb_terms_from_metrics(metrics, out / "vlb_terms.png"))
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}, indent=2))
    print("wrote " + " and ".join(map(str, written)))
    return 0


def _sample(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from .images import image_grid, points_image
    from .pipeline import with_sampler

    pipe = _pipeline(args.pipeline)
    if args.sampler:  # the same model and β schedule, another reverse rule
        pipe = with_sampler(pipe, args.sampler)
    if args.num_samples is not None:
        from .shards import sample_to_shards

        if torch.cuda.is_available():  # under a launcher, each process on its own GPU
            pipe.to(f"cuda:{os.environ.get('LOCAL_RANK', 0)}")
        out = sample_to_shards(
            pipe,
            args.out,
            args.num_samples,
            batch_size=args.batch_size or 64,
            shard_size=args.shard_size,
            seed=args.seed,
            num_inference_steps=args.steps,
        )
        print(f"wrote the shards of process {os.environ.get('RANK', 0)} to {out}")
        return 0
    generator = torch.Generator().manual_seed(args.seed)
    out = pipe(
        batch_size=args.batch_size or 16,
        num_inference_steps=args.steps,
        generator=generator,
        output_type="pt",
    )
    picture = points_image(out.images) if makes_points(pipe.unet) else image_grid(out.images)
    picture.save(args.out)
    print(f"wrote {args.out}")
    return 0


def _push(args: argparse.Namespace, argv: list[str]) -> int:
    from . import hub

    commit = hub.push_folder(args.folder, args.repo_id, private=args.private or None, revision=args.revision)
    print(f"pushed {args.folder} to {args.repo_id} ({commit.oid})")
    return 0


COMMANDS = {"train": _train, "evaluate": _evaluate, "sample": _sample, "push": _push}

if __name__ == "__main__":
    sys.exit(main())
