"""Evaluation and model card of the hand-joints model, end to end through the serving code.

`evaluate_model` analyses each annotated image as the sidecar would (`HandJointsModel.analyse`)
and reports what the study reports: PR-AUC per class healthy / mild / severe and over all joints,
RA (SHS) and OA (KL) separately; detection AP at IoU 0.5 per joint and mAP; per-joint recall;
confusion per grade and per class. `write_card` writes card.md + card.yaml beside the model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.hand_joints import joints as J
from models.hand_joints.wrapper import (
    INTENDED_USE,
    MANUFACTURER,
    NAME,
    PUBLISHED,
    REFERENCE,
    HandJointsModel,
)
from train.common import metrics as M
from train.hand_joints.annotations import AnnotatedImage

# --- evaluation ------------------------------------------------------------------------------


def _pr_aucs(y3: np.ndarray, p3: np.ndarray) -> dict[str, float]:
    out = {}
    for c, name in enumerate(J.THREE_CLASSES):
        pos = y3 == c
        out[name] = float(M.average_precision(pos, p3[:, c])) if 0 < pos.sum() < len(pos) else float("nan")
    onehot = np.eye(3)[y3]
    out["all"] = float(M.average_precision(onehot.ravel(), p3.ravel()))
    return out


def evaluate_model(model: HandJointsModel, images: Sequence[AnnotatedImage], out_dir: Path,
                   seed: int = 0, source: str = "phantoms") -> dict[str, Any]:
    """The published evaluation on annotated images through the serving path; writes reports.

    Each image is analysed as in service (the side from its header, else inferred); a truth
    hand is paired with the result of the same side, and one without (side inferred wrongly)
    counts its joints as missed and its grades as not scored (`details.hands_unmatched`)."""
    from train.common.reports import _row, write_detection_report, write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    dets: list[M.Box] = []
    gts: list[M.Box] = []
    hits = {n: [0, 0] for n in J.JOINTS}
    graded: dict[str, list[tuple[int, np.ndarray]]] = {J.SHS: [], J.KL: []}
    latencies = []
    unmatched = 0
    for i, img in enumerate(images):
        ds = img.load()
        t = time.perf_counter()
        results = list(model.analyse(ds))
        latencies.append(time.perf_counter() - t)
        for h, truth in enumerate(img.hands):
            res = next((r for r in results if r.laterality == truth.laterality), None)
            if res is not None:
                results.remove(res)
            else:
                unmatched += 1
            by_name = {j.name: j for j in res.joints} if res is not None else {}
            image_id = f"{i}/{h}"
            for name in J.JOINTS:
                gt = truth.boxes[name]
                gts.append(M.Box(image_id, name, *gt))
                hits[name][1] += 1
                if name not in by_name:
                    continue
                j = by_name[name]
                dets.append(M.Box(image_id, name, *j.box, score=j.confidence))
                if M.iou(j.box, gt) >= 0.5 and j.confidence >= model.min_confidence:
                    hits[name][0] += 1
            if res is None:
                continue
            for name, grade in truth.shs.items():
                graded[J.SHS].append((grade, by_name[name].p_shs))
            for name, grade in truth.kl.items():
                graded[J.KL].append((grade, by_name[name].p_kl))
    det = write_detection_report(out_dir / "detection", detections=dets, ground_truths=gts,
                                 class_names=list(J.JOINTS), title=f"Joint detection, AP at IoU 0.5 ({source})",
                                 n_boot=100, seed=seed)
    summary: dict[str, dict[str, Any]] = {"detection.map50": det.summary["map"]}
    recall = {n: h / t for n, (h, t) in hits.items()}
    summary["detection.recall_mean"] = _row("Per-joint recall at IoU 0.5 (mean over joints)",
                                            float(np.mean(list(recall.values()))))
    details: dict[str, Any] = {"recall_per_joint": recall,
                               "ap_per_joint": {k.removeprefix("ap."): v["value"] for k, v in det.summary.items()
                                                if k.startswith("ap.")}}
    for scheme, tag, disease in ((J.SHS, "ra", "RA (SHS narrowing)"), (J.KL, "oa", "OA (KL)")):
        if not graded[scheme]:
            continue
        y = np.array([g for g, _ in graded[scheme]])
        p = np.stack([pr for _, pr in graded[scheme]])
        y3 = np.array([J.THREE_CLASS[scheme][g] for g in y])
        p3 = np.stack([J.three_class_probabilities(scheme, pr) for pr in p])
        aucs = _pr_aucs(y3, p3)
        for k, v in aucs.items():
            summary[f"{tag}.pr_auc.{k}"] = _row(f"{disease}: PR-AUC {k}", v)
        summary[f"{tag}.grade_accuracy"] = _row(f"{disease}: exact grade accuracy", float((p.argmax(1) == y).mean()))
        summary[f"{tag}.kappa_quadratic"] = _row(f"{disease}: quadratic weighted kappa",
                                                 float(M.cohen_kappa(y, p.argmax(1), weights="quadratic")))
        details[f"{tag}.confusion_grade"] = M.confusion_matrix(y, p.argmax(1), labels=list(range(5))).tolist()
        details[f"{tag}.confusion_class"] = M.confusion_matrix(y3, p3.argmax(1), labels=[0, 1, 2]).tolist()
        details[f"{tag}.n_joints"] = len(y)
        write_report(out_dir / tag, task="multiclass", y_true=y3, probabilities=p3,
                     class_names=list(J.THREE_CLASSES), title=f"{disease}: healthy / mild / severe per joint",
                     published={f"pr_auc.{k}": v for k, v in PUBLISHED.items() if k.startswith(tag)},
                     n_boot=100, seed=seed)
    details["latency_ms_mean"] = 1000 * float(np.mean(latencies))
    details["hands_unmatched"] = unmatched
    payload = {"task": "hand_joints", "n_cases": len(images), "source": source, "summary": summary, "details": details,
               "published": {k: {"value": v, "ci_low": None, "ci_high": None, "text": f"{v:.3f}"}
                             for k, v in PUBLISHED.items()}}
    (out_dir / "metrics.json").write_text(json.dumps(_json_safe(payload), indent=2))
    lines = [f"# Hand joints on held-out {source}", "", f"images: {len(images)}", "",
             "| Metric | Key | Ours | Published |", "|---|---|---|---|"]
    for k, r in summary.items():
        pub = PUBLISHED.get(k)
        lines.append(f"| {r['label']} | `{k}` | {_fmt(r['value'])} | {_fmt(pub)} |")
    for tag in ("ra", "oa"):
        if f"{tag}.confusion_grade" in details:
            lines += ["", f"## {tag.upper()} confusion per grade (rows truth 0-4, columns predicted)", ""]
            lines += ["| | " + " | ".join(str(g) for g in range(5)) + " |", "|---" * 6 + "|"]
            lines += [f"| **{g}** | " + " | ".join(str(v) for v in row) + " |"
                      for g, row in enumerate(details[f"{tag}.confusion_grade"])]
    lines += ["", "## Per-joint recall and AP@0.5", "", "| Joint | Recall | AP |", "|---|---|---|"]
    lines += [f"| {n} | {_fmt(recall[n])} | {_fmt(details['ap_per_joint'].get(n))} |" for n in J.JOINTS]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return payload


def _fmt(x: float | None) -> str:
    return "—" if x is None or not np.isfinite(float(x)) else f"{float(x):.3f}"


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_card(metrics: dict[str, Any] | Path, sha: str, version: str, out_dir: Path, seed: int, n_images: int,
               n_params: int) -> None:
    """card.md + card.yaml: the harness card with the published table beside ours."""
    from train.common.cards import write_model_card

    write_model_card(
        out_dir, model_id="hand_joints", version=version, name=NAME, intended_use=INTENDED_USE,
        inputs_and_routing=(
            "CR Image Storage or DX Image Storage (For Presentation), PA hand, one or both hands; "
            "routed by conf/routes.yaml (Modality CR/DX and BodyPartExamined HAND, or 'hand' in the "
            "description or protocol). Grey levels through the modality and VOI LUTs, MONOCHROME1 "
            "inverted; ImagerPixelSpacing sets a 2 mm detector grid (128 x 128); laterality from "
            "ImageLaterality / Laterality / description (inferred from the image when absent); "
            "'B' images split in two; left hands mirrored to a canonical right hand and results "
            "mapped back. Outputs: TID 1500 SR (planar ROI per joint with grade and "
            "probabilities, per-hand totals and counts) and a GSPS with the boxes and labels."),
        labels=J.grade_labels(J.SHS) + J.grade_labels(J.KL) + J.THREE_CLASSES,
        label_rule=(J.three_class_describe() + " Scheme by indication: rheumatoid arthritis -> SHS "
                    "narrowing, hand osteoarthritis -> KL, unknown -> both. SHS grades: "
                    + "; ".join(J.SHS_GRADES) + ". KL grades: " + "; ".join(J.KL_GRADES) + "."),
        training_data=(
            f"Synthetic hand radiographs (train/phantoms/hand.py), seed {seed}: {n_images} "
            "images, one per fake patient, 70/15/15 patient split stratified by disease; RA hands "
            "graded on the 15 SHS joints, OA hands on the 15 KL joints; ~20 % both-hands images; "
            f"CR/DX, MONOCHROME1/2, 0.25-0.35 mm pixels. {n_params} parameters in total.\n\n"
            "Detector choice: a heatmap keypoint UNet (MONAI UNet, 21 joint channels, spatial "
            "softmax trained by integral regression) with each box derived from bone geometry, rather than MONAI's "
            "RetinaNet. Every scored joint appears exactly once per hand, so one heatmap channel "
            "per joint encodes the anatomy directly (no anchors, no class confusion between "
            "neighbouring PIPs, no NMS); the joints' own positions give the bone axes the "
            "grader's crops are aligned to and the hand size the boxes scale with; and it "
            "trains in minutes on a CPU, where an anchor detector with 21 classes of small, "
            "look-alike objects would need far more data and time."),
        metrics=metrics, published=PUBLISHED,
        limits=[
            "Trained and tested on synthetic phantoms only; says nothing about patients.",
            "Phantom anatomy is simplified (ellipsoid carpals, straight rays); real erosions, "
            "osteophytes and ankylosis are more varied, and SHS erosion scores are not produced.",
            "The grade-to-class mapping (healthy/mild/severe) is ours, written above; the seed "
            "study's exact cut-offs may differ.",
            "Hands are expected PA with fingers towards the top of the image; other views are "
            "not handled. Laterality inferred from the image is reported as such in the SR notes.",
        ],
        not_for_clinical_use=True, weights_sha256=sha, manufacturer=MANUFACTURER, reference=REFERENCE)
