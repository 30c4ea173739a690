"""CLI verbs that build data, train models and run the demo: data, train, demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from lapsv.cli.options import prepare_output
from lapsv.data.prepare import prepare_corpus
from lapsv.data.validate import validate_manifest
from lapsv.demo import SIDES, run_demo
from lapsv.demo.corpus import build_demo_corpus
from lapsv.demo.noise import build_demo_noise
from lapsv.training import load_recipe, train


def cmd_train(args: argparse.Namespace) -> int:
    overrides = [*(args.set or []), *(["data.drop_invalid=true"] if args.drop_invalid else [])]
    config = load_recipe(args.recipe, overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.recipe).stem
    outputs = train(config, out, progress=not args.quiet, trust_pickle=args.trust_pickle)
    for name, path in outputs.items():
        print(f"{name}: final model -> {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    prepare_output(args.out, what="demo output folder", folder=True)  # before any work
    frontends = SIDES if args.frontend == "all" else (args.frontend,)
    result = run_demo(
        args.out,
        frontends=tuple(frontends),
        budget_minutes=args.budget_minutes,
        seeds=args.seeds,
        overrides=args.set or [],
    )
    print(f"done in {result.seconds / 60:.1f} min; open {result.report}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_verb == "validate":
        report = validate_manifest(
            args.manifest,
            crop_seconds=args.crop_seconds,
            min_utterances=args.min_utterances,
            sample_rate=args.sample_rate or None,
        )
        print(report.format())
        return 0 if report.ok else 1
    if args.data_verb == "demo-corpus":
        summary = build_demo_corpus(Path(args.out), cache=Path(args.cache) if args.cache else None)
        print(summary.format_table())
    elif args.data_verb == "demo-noise":
        speech = Path(args.speech_manifest) if args.speech_manifest else None
        cache = Path(args.cache) if args.cache else None
        info = build_demo_noise(Path(args.out), speech_manifest=speech, cache=cache)
        for name, value in info.items():
            print(f"{name}: {value}")
    else:
        summary = prepare_corpus(
            Path(args.source),
            Path(args.out),
            layout=args.data_verb.removeprefix("prepare-"),
            val_speakers=args.val_speakers,
            seed=args.seed,
        )
        print(summary)
    return 0
