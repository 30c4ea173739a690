"""CLI verbs that run a model on audio or trials: embed, verify, eval, score, info, export,
inspect. Each turns flags into keyword arguments of the library and prints the result."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from lapsv.audio import load_audio
from lapsv.cli.failures import report_failures
from lapsv.cli.options import audio_inputs, prepare_output
from lapsv.config import dump_yaml, to_dict
from lapsv.distributed import current_processes, extract_sharded
from lapsv.embeddings import EmbeddingSet
from lapsv.export import export_model
from lapsv.inspection import dominant_layers, layer_view, plot_layer_weights, winner_statistics
from lapsv.model import SpeakerModel
from lapsv.scoring.evaluate import evaluate, format_metrics, score_embeddings
from lapsv.scoring.metrics import compute_metrics
from lapsv.scoring.trials import read_scores, read_trials, write_scores
from lapsv.speaker import load_model


def cmd_embed(args: argparse.Namespace) -> int:
    items = audio_inputs(args.audio)
    processes = current_processes(args.device)  # one process, or one of accelerate launch's
    if processes.is_main:
        prepare_output(args.out, what="embeddings file")  # before any work
    model = load_model(args.model, device=processes.device, trust_pickle=args.trust_pickle)
    out = Path(args.out)
    extraction = extract_sharded(
        model,
        items,
        out,
        model_id=model.model_id,
        batch_size=args.batch_size,
        device=processes.device,
        progress=len(items) >= 20,
        max_seconds=args.max_seconds,
        processes=processes,
    )
    result = extraction.embeddings
    if result is None:  # another process of the job: the main one writes and reports
        return 0
    if extraction.reused_chunks:
        print(
            f"resumed: {extraction.reused} files done in {extraction.reused_chunks} of "
            f"{extraction.chunks} chunk parts of an earlier run (in {extraction.work}), "
            f"{extraction.newly_embedded} embedded now",
            file=sys.stderr,
        )
    if not result.ids:
        extraction.finish()  # a rerun tries every file again
        print(
            f"error: none of the {len(items)} files could be embedded: nothing written",
            file=sys.stderr,
        )
        report_failures(result.failures)
        return 1
    result = result.in_order([utt for utt, _ in items])  # the inputs' order, not the batches'
    result.save(out, model_id=model.model_id)
    extraction.finish()
    print(
        f"embedded {len(result.ids)} of {len(items)} files ({result.seconds.sum():.1f} s of "
        f"audio) with {args.model}: {model.embed_dim}-d embeddings -> {out}"
    )
    for utt, vector in zip(result.ids[: args.show], result.embeddings[: args.show], strict=False):
        preview = " ".join(f"{v:+.3f}" for v in vector[:6])
        print(f"  {utt}  |e|={np.linalg.norm(vector):.3f}  [{preview} ...]")
    return report_failures(result.failures)


def cmd_eval(args: argparse.Namespace) -> int:
    processes = current_processes(args.device)  # one process, or one of accelerate launch's
    if processes.is_main:
        prepare_output(args.out, what="results folder", folder=True)  # before any work
    processes.barrier()  # the other processes start once the results folder is checked
    result = evaluate(
        args.model,
        args.trials,
        args.audio_root,
        out=args.out,
        cohort=args.cohort,
        norm=args.norm,
        calibrate=args.calibrate,
        top_n=args.top_n,
        batch_size=args.batch_size,
        device=processes.device,
        save_scoring=args.save_scoring,
        progress=True,
        trust_pickle=args.trust_pickle,
    )
    if result is None:  # another process of the job: it helped embed; the main one scores
        return 0
    reuse = (
        "reused cached embeddings"
        if result.newly_embedded == 0
        else (f"embedded {result.newly_embedded} utterances")
    )
    print(f"{len(result.trials)} trials, {reuse}; results in {result.out_dir}")
    if result.skipped_trials:
        print(f"skipped {result.skipped_trials} trials whose audio could not be embedded")
    if "eer" in result.metrics:
        model_path = Path(str(args.model))
        name = model_path.parent.name if model_path.name == "model" else model_path.name
        label = f"{name} ({args.norm}" + (", qmf)" if args.calibrate == "qmf" else ")")
        print(format_metrics({label: result.metrics}))
    for kind, path in result.files.items():
        print(f"  {kind}: {path}")
    return report_failures(result.failures)


def cmd_score(args: argparse.Namespace) -> int:
    if args.out:
        prepare_output(args.out, what="score file")  # before any work
    if args.scores:
        trials, scores = read_scores(args.scores)
    else:
        if not (args.embeddings and args.trials):
            print(
                "error: give --scores FILE, or --embeddings FILE.npz --trials FILE", file=sys.stderr
            )
            return 2
        trials = read_trials(args.trials)
        mean_from = EmbeddingSet.load(args.mean_from)[0] if args.mean_from else None
        embeddings = EmbeddingSet.load(args.embeddings)[0]
        scores = score_embeddings(embeddings, trials, enrollment=args.enroll, mean_from=mean_from)
        if args.out:
            write_scores(args.out, trials, scores)
    if trials.labels is None:
        print("error: the trials carry no labels: nothing to measure", file=sys.stderr)
        return 2
    metrics = compute_metrics(scores, trials.labels, calibrated=args.calibrated)
    print(json.dumps(metrics, indent=1))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    model = load_model(args.model, trust_pickle=args.trust_pickle)
    encoder = model.encoder
    if not isinstance(encoder, torch.nn.Module):  # an exported file
        print(f"model: {args.model} ({encoder.kind}, exported by lapsv from {encoder.source})")
        print(f"embedding size: {model.embed_dim}   sample rate: {model.sample_rate} Hz")
        print(f"model id: {model.model_id}   calibrated: {model.scoring.calibrated}")
        return 0
    n_params = sum(p.numel() for p in encoder.parameters())
    print(f"model: {args.model}")
    print(f"embedding size: {model.embed_dim}   sample rate: {model.sample_rate} Hz")
    print(f"model id: {model.model_id}   calibrated: {model.scoring.calibrated}")
    print(f"parameters: {n_params:,}")
    if isinstance(encoder, SpeakerModel):
        backend_params = sum(p.numel() for p in encoder.backend.parameters())
        print(f"backend parameters: {backend_params:,}")
        print(dump_yaml(to_dict(encoder.config)), end="")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    model = load_model(args.model, device=args.device, trust_pickle=args.trust_pickle)
    result = model.verify(args.a, args.b, threshold=args.threshold, max_seconds=args.max_seconds)
    kind = "cosine (mean-subtracted)" if model.scoring.mean is not None else "cosine"
    print(f"{kind}: {result.cosine:.4f}")
    if result.asnorm is not None:
        print(f"AS-norm: {result.asnorm:.4f}")
    if result.llr is not None:
        print(f"calibrated LLR: {result.llr:+.3f}")
    if result.same is None:
        print(
            "decision: none (no threshold: pass --threshold, or calibrate the model with "
            "`lapsv eval MODEL ... --cohort TRAIN.tsv --calibrate qmf --save-scoring`)"
        )
        return 0
    verdict = "SAME speaker" if result.same else "DIFFERENT speakers"
    print(
        f"decision: {verdict} (score {result.decision_score:+.4f} vs threshold "
        f"{result.threshold:+.4f} from {result.threshold_source})"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    prepare_output(args.out, what="exported model file")  # before any work
    model = load_model(args.model, trust_pickle=args.trust_pickle)
    result = export_model(model, args.out, format=args.format, source=str(args.model))
    size = result.path.stat().st_size / 1e6
    print(
        f"exported {args.model} -> {result.path} ({args.format}, {size:.1f} MB): waveforms "
        f"(batch, samples) float32 at {model.sample_rate} Hz + lengths (batch,) int64 -> "
        f"embeddings (batch, {model.embed_dim})"
    )
    checks = "  ".join(
        f"{'batch of all' if seconds == 0 else f'{seconds:g} s'}: {diff:.1e}"
        for seconds, diff in result.max_abs_diff.items()
    )
    print(f"max |exported - PyTorch| embedding difference: {checks}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    if args.plot:
        prepare_output(args.plot, what="plot file")  # before any work
    model = load_model(args.model, trust_pickle=args.trust_pickle).encoder
    if not isinstance(model, SpeakerModel):
        print(f"error: {args.model} has no layer aggregation to inspect", file=sys.stderr)
        return 2
    view = layer_view(model, load_audio(args.audio, sample_rate=model.sample_rate))
    weights = view.weights
    heads, frames, layers = weights.shape
    aggregation = model.config.backend.aggregation
    print(f"{aggregation} layer weights: {heads} head(s) x {frames} frames x {layers} layers")
    for layer, score in dominant_layers([weights], top=min(3, layers)):
        print(f"  layer {layer:2d}: mean weight {score:.3f}")
    if view.winners is not None:
        stats = winner_statistics([view.winners], n_layers=layers)
        shares = " ".join(f"{100 * share:.0f}%" for share in stats["share_per_layer"])
        print(f"max over layers: cells won per layer {shares}")
        print(
            f"  one layer wins >90% of frames on {stats['dominated_channels']} of "
            f"{stats['channels']} channels; a channel's winner changes on "
            f"{100 * stats['switch_rate']:.0f}% of consecutive frames"
        )
    if args.plot:
        plot_layer_weights(
            weights,
            args.plot,
            title=f"{aggregation} layer weights",
            frames_per_second=view.frames_per_second,
        )
        print(f"plot -> {args.plot}")
    return 0
