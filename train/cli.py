"""`python -m train <model> fit|evaluate|card|manifest|demo-weights|export|fit-guard|calibrate|operating-point|phantom-manifest [options]`.

Parses the command line into the typed requests of train.tasks and hands them to the model's
registered task. Default folders: runs/<model>/fit (checkpoints, epochs.jsonl, phantoms),
runs/<model>/evaluate (report), runs/<model>/card (model card), runs/<model>/export (exported
network for onnxruntime / Triton).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from models.backends import BackendError
from train.common.manifest import KEYS, ManifestError, build_manifest
from train.tasks import (
    CardRequest,
    DemoWeightsRequest,
    EvaluateRequest,
    ExportRequest,
    FitRequest,
    TaskSpec,
    load_tasks,
)

RUNS = Path("runs")
MODELS_YAML = Path("conf/models.yaml")


def _fit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, help="manifest CSV with train and val splits "
                   "(default: the task's seeded phantoms, written under --out)")
    p.add_argument("--out", type=Path, help="folder for last.pt, best.pt, epochs.jsonl "
                   "(default: runs/<model>/fit)")
    p.add_argument("--epochs", type=int, help="maximum number of epochs")
    p.add_argument("--lr", type=float, help="learning rate (AdamW; Adam for GANs)")
    p.add_argument("--weight-decay", type=float, help="decoupled weight decay")
    p.add_argument("--scheduler", choices=("cosine", "plateau", "none"),
                   help="learning-rate schedule: cosine annealing over the epochs, "
                        "reduce-on-plateau of the validation metric, or constant")
    p.add_argument("--patience", type=int,
                   help="stop after this many epochs without improvement (0: never)")
    p.add_argument("--seed", type=int, help="seed for weights, shuffling and phantoms")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if present)")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision even on CUDA")
    p.add_argument("--checkpoint-every", type=int,
                   help="also keep epoch_NNN.pt every N epochs (0: only last.pt and best.pt)")
    p.add_argument("--batch-size", type=int, default=16, help="training batch size (default 16)")
    p.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader worker processes (default 0: load in the main process)")
    p.add_argument("--resume", type=Path, help="checkpoint to resume from exactly (e.g. last.pt)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-guard", action="store_true",
                   help="do not fit the input-domain guard into the serving checkpoint after training")


def build_parser(tasks: dict[str, TaskSpec]) -> argparse.ArgumentParser:
    """The argument parser; `tasks` supplies the model choices and their summaries."""
    models = "\n".join(f"  {name:<14} {spec.summary}" for name, spec in sorted(tasks.items()))
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train, evaluate and document the sidecar's clinical models.",
        epilog=f"models:\n{models}\n\nRun 'python -m train <model> <command> --help' for the "
               "options of one command.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(tasks), metavar="model",
                        help="the model id (listed below)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    fit = sub.add_parser("fit", help="train on a manifest (or phantoms), with checkpoints",
                         description="Train the model. Options left out take the task's defaults.")
    _fit_options(fit)

    ev = sub.add_parser("evaluate", help="score a split and write metrics.json, report.md, plots",
                        description="Evaluate a checkpoint on one split of a manifest.")
    ev.add_argument("--manifest", type=Path,
                    help="manifest CSV (default: the phantoms beside the checkpoint)")
    ev.add_argument("--checkpoint", type=Path,
                    help="checkpoint to evaluate (default: runs/<model>/fit/best.pt)")
    ev.add_argument("--split", default="test",
                    help="split to evaluate: test, external, val ... (default test)")
    ev.add_argument("--out", type=Path, help="report folder (default: runs/<model>/evaluate)")
    ev.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    ev.add_argument("--device", help="torch device (default: cuda if present, else cpu)")
    ev.add_argument("--seed", type=int, default=0, help="bootstrap seed for CIs (default 0)")

    cd = sub.add_parser("card", help="write card.md and card.yaml from an evaluation",
                        description="Write the model card from an evaluation folder.")
    cd.add_argument("--evaluation", type=Path,
                    help="evaluation folder with metrics.json (default: runs/<model>/evaluate)")
    cd.add_argument("--checkpoint", type=Path,
                    help="the weights the card describes (default: runs/<model>/fit/best.pt)")
    cd.add_argument("--out", type=Path, help="card folder (default: runs/<model>/card)")

    mf = sub.add_parser("manifest", help="build a manifest CSV from a DICOM folder and labels",
                        description="Walk a DICOM (or PNG) folder, group files by --key, join "
                                    "the label CSV and write the manifest.")
    mf.add_argument("--dicom-dir", type=Path, required=True, help="folder to walk (recursively)")
    mf.add_argument("--labels", type=Path, required=True,
                    help="label CSV: the key column plus label, label_*, reader<N>_*, view, "
                         "site, split, patient_id (any of them)")
    mf.add_argument("--key", choices=KEYS,
                    help="what a label row names: one file (sop_instance_uid), a series "
                         "(series_uid), a study (accession) or a file path (path, for PNGs) "
                         "(default: the task's key)")
    mf.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    mf.add_argument("--strict", action="store_true",
                    help="fail when a label row matches no file")

    dw = sub.add_parser("demo-weights", help="rebuild the bundled demo weights from phantoms",
                        description="Train from seeded phantoms and write the demo weights "
                                    "(NOT FOR CLINICAL USE).")
    dw.add_argument("--out", type=Path, help="weights file (default: the task's bundled path)")
    dw.add_argument("--work-dir", type=Path,
                    help="folder for phantoms and checkpoints (default: runs/<model>/demo)")
    dw.add_argument("--seed", type=int, default=0, help="seed (default 0)")

    ex = sub.add_parser("export", help="export the network for onnxruntime or Triton, checked against torch",
                        description="Export the network forward (pre/post-processing stay in models/) "
                                    "as ONNX or TorchScript, optionally into a Triton model repository "
                                    "with dynamic batching and priority queues; the export is refused "
                                    "when it disagrees with the in-process model.")
    ex.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                    help="onnx (onnxruntime and Triton's onnxruntime backend) or torchscript "
                         "(Triton's pytorch_libtorch) (default onnx)")
    ex.add_argument("--checkpoint", type=Path, help="weights to export (default: the bundled weights)")
    ex.add_argument("--out", type=Path, help="folder for the exported file (default: runs/<model>/export)")
    ex.add_argument("--triton-repo", type=Path, help="also write a Triton model repository here")
    ex.add_argument("--max-batch-size", type=int, default=16, help="Triton max_batch_size (default 16)")
    ex.add_argument("--preferred-batch-sizes", type=int, nargs="+", default=[4, 8, 16],
                    help="dynamic batcher's preferred batch sizes (default 4 8 16)")
    ex.add_argument("--max-queue-delay-us", type=int, default=2000,
                    help="dynamic batcher's max queue delay, microseconds (default 2000)")
    ex.add_argument("--alert-queue-timeout-ms", type=int, default=500,
                    help="queue timeout of priority level 1, streaming alerts (default 500)")
    ex.add_argument("--default-queue-timeout-ms", type=int, default=5000,
                    help="queue timeout of the default priority level (default 5000)")
    ex.add_argument("--tolerance", type=float, default=1e-4,
                    help="largest accepted output difference from torch (default 1e-4)")
    fg = sub.add_parser("fit-guard", help="fit the input-domain guard into a checkpoint (and models.yaml, card)",
                        description="Fit the input-domain guard (models/guard.py) on in-domain inputs through "
                                    "the model's own prepare, threshold it on held-out in-domain inputs, store "
                                    "it in the checkpoint, and update the sha256 in models.yaml and the card.")
    fg.add_argument("--checkpoint", type=Path,
                    help="checkpoint to fit the guard into, in place (default: the weights models.yaml names)")
    fg.add_argument("--models-yaml", type=Path, default=MODELS_YAML,
                    help=f"models.yaml whose sha256 to update (default {MODELS_YAML})")
    fg.add_argument("--manifest", type=Path,
                    help="fit on this manifest's train split, threshold on its val split (default: phantoms)")
    fg.add_argument("--seed", type=int, default=7001, help="phantom seed (default 7001; +1 calibrates, +2 tests)")
    fg.add_argument("--n-fit", type=int, help="phantom inputs to fit on (default: per model)")
    fg.add_argument("--n-calibration", type=int, help="held-out phantom inputs for the threshold")
    fg.add_argument("--quantile", type=float, default=0.99,
                    help="threshold quantile of held-out in-domain scores (default 0.99: ~1 %% refused)")
    fg.add_argument("--no-foreign", action="store_true", help="skip the check on pydicom-data's foreign images")
    fg.add_argument("--no-card", action="store_true", help="leave the model card as it is")
    cb = sub.add_parser("calibrate", help="site operating point and temperature scaling from a validation manifest",
                        description="Score a validation manifest through the served model, fit temperature "
                                    "scaling, choose the threshold for --target with bootstrap CIs, and store "
                                    "both in the checkpoint (and models.yaml, the card, a report with the "
                                    "calibration plot). Binary models: lge_qa, gout_mtp1.")
    cb.add_argument("--manifest", type=Path, required=True, help="manifest CSV with the validation split")
    cb.add_argument("--split", default="val", help="split to calibrate on (default val)")
    cb.add_argument("--target", required=True,
                    help="sensitivity=S | specificity=S | alert_rate=R | youden")
    cb.add_argument("--checkpoint", type=Path, help="checkpoint to calibrate in place (default: models.yaml's)")
    cb.add_argument("--models-yaml", type=Path, default=MODELS_YAML, help=f"default {MODELS_YAML}")
    cb.add_argument("--out", type=Path, help="report folder (default runs/<model>/calibrate)")
    cb.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    cb.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    cb.add_argument("--no-card", action="store_true", help="leave the model card as it is")
    sub.add_parser("operating-point", help="write the operating-point section of an argmax model's card",
                   description="For the models without a site threshold (synovitis grades, hand grades, the "
                               "Tsukuba head): write the decision rule and the card's figures at it into the "
                               "card's operating-point section. The binary models get theirs from calibrate.")
    pm = sub.add_parser("phantom-manifest", help="labelled phantom validation files and manifest (for calibrate)",
                        description="Write phantom DICOM files of a seed training never used, with their labels, "
                                    "and a manifest CSV (split val) that calibrate reads. Binary models: "
                                    "lge_qa, gout_mtp1. NOT FOR CLINICAL USE: figures from it describe phantoms.")
    pm.add_argument("--out", type=Path, required=True, help="folder for dicom/ and the manifest CSV")
    pm.add_argument("--seed", type=int, default=7300, help="phantom seed (default 7300, unused in training)")
    pm.add_argument("--patients", type=int, default=60, help="phantom patients (default 60)")
    return parser


def _guard_after_fit(model_id: str, out_dir: Path, best: Path | None, manifest: Path | None) -> str:
    """Fit the domain guard into the serving checkpoint a fit wrote (the first candidate the
    model's factory accepts); a model without a phantom sampler or serving checkpoint is named."""
    from models.checkpoint import ModelUnavailable
    from train.common.guard import SAMPLERS, FitGuardRequest, run_fit_guard

    if model_id not in SAMPLERS and manifest is None:
        return "no domain guard (no phantom sampler for this model)"
    for candidate in (out_dir / f"{model_id}.pt", out_dir / "bundle.pt", best):
        if candidate is None or not candidate.is_file():
            continue
        try:
            guard = run_fit_guard(FitGuardRequest(model_id, candidate, manifest=manifest, check_foreign=False))
        except (ModelUnavailable, ValueError, KeyError) as exc:
            logging.getLogger("train.cli").info("not a serving checkpoint: %s (%s)", candidate, exc)
            continue
        return f"domain guard fitted into {candidate} (threshold {guard.threshold:.2f})"
    return "no serving checkpoint found for the domain guard; run fit-guard on it"


def _configured_weights(model_id: str, models_yaml: Path) -> Path:
    """The weights path models.yaml gives `model_id` (relative to the file's folder)."""
    import yaml

    entry = (yaml.safe_load(models_yaml.read_text()) or {}).get("models", {}).get(model_id)
    if not entry or not entry.get("weights"):
        raise ValueError(f"{models_yaml} names no weights for {model_id!r}; pass --checkpoint")
    path = Path(entry["weights"])
    return path if path.is_absolute() else (models_yaml.parent / path).resolve()


def _fit_request(spec: TaskSpec, args: argparse.Namespace) -> FitRequest:
    overrides = {
        "epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay,
        "scheduler": args.scheduler, "patience": args.patience, "seed": args.seed,
        "device": args.device, "checkpoint_every": args.checkpoint_every,
    }
    config = replace(spec.default_config, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_amp:
        config = replace(config, amp=False)
    if args.no_progress:
        config = replace(config, progress=False)
    return FitRequest(out_dir=args.out or RUNS / spec.name / "fit", config=config,
                      manifest=args.manifest, batch_size=args.batch_size,
                      num_workers=args.num_workers, resume=args.resume)


def run(spec: TaskSpec, args: argparse.Namespace) -> str:
    """Dispatch one parsed command; returns the line to print."""
    base = RUNS / spec.name
    if args.command == "fit":
        request = _fit_request(spec, args)
        result = spec.fit(request)
        line = (f"best {result.val_metric} {result.best_metric:.4f} at epoch {result.best_epoch}; "
                f"checkpoint {result.best_checkpoint}")
        if not args.no_guard:
            line += "; " + _guard_after_fit(spec.name, request.out_dir, result.best_checkpoint, args.manifest)
        return line
    if args.command == "evaluate":
        out = spec.evaluate(EvaluateRequest(
            checkpoint=args.checkpoint or base / "fit" / "best.pt",
            out_dir=args.out or base / "evaluate", manifest=args.manifest, split=args.split,
            batch_size=args.batch_size, device=args.device, seed=args.seed))
        return f"report written to {out}"
    if args.command == "card":
        out = spec.card(CardRequest(
            evaluation_dir=args.evaluation or base / "evaluate",
            checkpoint=args.checkpoint or base / "fit" / "best.pt",
            out_dir=args.out or base / "card"))
        return f"model card written to {out}"
    if args.command == "manifest":
        manifest = build_manifest(args.dicom_dir, args.labels, key=args.key or spec.manifest_key,
                                  out_csv=args.out, strict=args.strict)
        return f"{len(manifest)} rows written to {args.out}"
    if args.command == "demo-weights":
        out = spec.demo_weights(DemoWeightsRequest(
            work_dir=args.work_dir or base / "demo", out_path=args.out, seed=args.seed))
        return f"demo weights written to {out} (NOT FOR CLINICAL USE)"
    if args.command == "export":
        if spec.export is None:
            raise ValueError(f"model {spec.name} runs in process only: its task offers no export")
        exported = spec.export(ExportRequest(
            format=args.format, out_dir=args.out or base / "export", checkpoint=args.checkpoint,
            triton_repo=args.triton_repo, max_batch_size=args.max_batch_size,
            preferred_batch_sizes=tuple(args.preferred_batch_sizes), max_queue_delay_us=args.max_queue_delay_us,
            alert_queue_timeout_ms=args.alert_queue_timeout_ms,
            default_queue_timeout_ms=args.default_queue_timeout_ms, tolerance=args.tolerance))
        lines = []
        for net in exported.networks:
            where = f"; Triton model {net.triton_model_dir}" if net.triton_model_dir else ""
            lines.append(f"{args.format} written to {net.model_file}{where}; max |torch - export| "
                         f"{net.max_abs_diff:.2e}; tensors {', '.join(net.input_names)} -> "
                         f"{', '.join(net.output_names)}")
        return "\n".join(lines)
    if args.command == "calibrate":
        from train.common.calibrate import CalibrateRequest, Target, run_calibrate
        from train.common.guard import CARD_DIRS

        checkpoint = args.checkpoint or _configured_weights(spec.name, args.models_yaml)
        op = run_calibrate(CalibrateRequest(
            model_id=spec.name, checkpoint=checkpoint, manifest=args.manifest, target=Target.parse(args.target),
            out_dir=args.out or base / "calibrate", split=args.split, models_yaml=args.models_yaml,
            card_dir=None if args.no_card else CARD_DIRS.get(spec.name), n_boot=args.bootstrap, seed=args.seed))
        return (f"{op['target']}: threshold {op['threshold']} (CI {op['threshold_ci']}), sensitivity "
                f"{op['sensitivity']}, specificity {op['specificity']}, alert rate {op['alert_rate']}, "
                f"temperature {op['temperature']}; stored in {checkpoint}")
    if args.command == "operating-point":
        from train.common.calibrate import write_rule_card
        from train.common.guard import CARD_DIRS

        if spec.name not in CARD_DIRS:
            raise ValueError(f"model {spec.name} has no bundled card")
        op = write_rule_card(CARD_DIRS[spec.name], spec.name)
        return f"operating point written into {CARD_DIRS[spec.name]}: {op['rule']} ({len(op['figures'])} figures)"
    if args.command == "phantom-manifest":
        from train.common.phantom_manifest import write_phantom_manifest

        written = write_phantom_manifest(spec.name, args.out, seed=args.seed, n_patients=args.patients)
        n = len(written.read_text().splitlines()) - 1
        return f"{n} labelled phantom files and {written} (split val; NOT FOR CLINICAL USE)"
    if args.command == "fit-guard":
        from train.common.guard import CARD_DIRS, FitGuardRequest, run_fit_guard

        checkpoint = args.checkpoint or _configured_weights(spec.name, args.models_yaml)
        guard = run_fit_guard(FitGuardRequest(
            model_id=spec.name, checkpoint=checkpoint, models_yaml=args.models_yaml, manifest=args.manifest,
            card_dir=None if args.no_card else CARD_DIRS.get(spec.name), seed=args.seed, n_fit=args.n_fit,
            n_calibration=args.n_calibration, quantile=args.quantile, check_foreign=not args.no_foreign))
        s = guard.summary()
        return (f"domain guard stored in {checkpoint}: threshold {s['threshold']}, held-out flagged "
                f"{s.get('calibration_flagged')} / {s.get('test_flagged')}, foreign {s.get('foreign')}")
    raise AssertionError(f"unhandled command {args.command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (2 for bad input, as argparse does)."""
    tasks = load_tasks()
    args = build_parser(tasks).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s %(message)s")
    try:
        print(run(tasks[args.model], args))
    except (ManifestError, FileNotFoundError, ValueError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
