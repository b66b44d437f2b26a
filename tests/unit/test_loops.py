"""Training loops on tiny models: they learn, checkpoint, resume exactly, and the toy CLI runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from train.cli import main as train_main
from train.common.loops import (
    FitConfig,
    GanConfig,
    KeypointConfig,
    classifier_scores,
    fit_classifier,
    fit_gan,
    fit_keypoints,
    load_checkpoint,
    predict_scores,
)
from train.common.seeding import torch_generator

QUIET: dict[str, Any] = {"progress": False, "seed": 0}


def _toy_data(n: int, seed: int, classes: int = 2) -> TensorDataset:
    """Learnable: the label is the bin of the image mean."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    m = x.mean(dim=(1, 2, 3))
    edges = torch.quantile(m, torch.linspace(0, 1, classes + 1)[1:-1])
    return TensorDataset(x, torch.bucketize(m, edges))


def _loaders(classes: int = 2) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(_toy_data(96, 1, classes), batch_size=16, shuffle=True,
                       generator=torch_generator(3))
    return train, DataLoader(_toy_data(48, 2, classes), batch_size=48)


def _net(outputs: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(16, outputs))


class TestFitClassifier:
    def test_binary_loss_goes_down_and_auc_is_high(self, tmp_path: Path) -> None:
        """On a learnable task the training loss falls and validation AUC ends high."""
        train, val = _loaders()
        result = fit_classifier(_net(), train, val, out_dir=tmp_path,
                                config=FitConfig(epochs=6, lr=1e-2, patience=0, **QUIET))
        losses = [h["train_loss"] for h in result.history]
        assert losses[-1] < losses[0] * 0.8
        assert result.best_metric > 0.8
        lines = (tmp_path / "epochs.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]

    def test_multiclass_and_ordinal_tasks_learn(self, tmp_path: Path) -> None:
        """Cross-entropy and cumulative-logit ordinal losses both fall; ordinal probs sum to 1."""
        train, val = _loaders(classes=3)
        cases: tuple[tuple[Literal["multiclass", "ordinal"], int], ...] = (("multiclass", 3), ("ordinal", 2))
        for task, outputs in cases:
            model = _net(outputs)
            result = fit_classifier(model, train, val, out_dir=tmp_path / task, task=task,
                                    val_metric="kappa",
                                    config=FitConfig(epochs=5, lr=1e-2, patience=0, **QUIET))
            losses = [h["train_loss"] for h in result.history]
            assert losses[-1] < losses[0], task
            y, scores = predict_scores(model, val, task=task, device="cpu")
            assert scores.shape == (48, 3) and y.shape == (48,)
            assert np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)

    def test_resume_continues_exactly_where_the_run_stopped(self, tmp_path: Path) -> None:
        """Resuming from epoch 2 gives the same epoch-3 loss, weights and optimizer state."""
        config = FitConfig(epochs=3, lr=1e-2, patience=0, checkpoint_every=1,
                           restore_best=False, **QUIET)
        train, val = _loaders()
        full = fit_classifier(_net(), train, val, config=config, out_dir=tmp_path / "full")

        torch.manual_seed(123)  # a different initialisation, overwritten by the resume
        other = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Dropout(0.1),
                              nn.Linear(16, 1))
        train, val = _loaders()
        resumed = fit_classifier(other, train, val, config=config, out_dir=tmp_path / "resumed",
                                 resume=tmp_path / "full" / "epoch_002.pt")

        assert [h["epoch"] for h in resumed.history] == [3]
        assert resumed.history[0]["train_loss"] == full.history[2]["train_loss"]
        assert resumed.history[0]["val_auc"] == full.history[2]["val_auc"]
        a, b = load_checkpoint(full.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
        for key, tensor in a["modules"]["model"].items():
            assert torch.equal(tensor, b["modules"]["model"][key]), key
        state_a, state_b = a["optimizers"]["model"]["state"], b["optimizers"]["model"]["state"]
        for param_id, state in state_a.items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b[param_id][name]))
        assert a["schedulers"] == b["schedulers"]

    def test_checkpoint_records_config_commit_and_best_metric(self, tmp_path: Path) -> None:
        """best.pt holds the config, the git commit (or None) and the best epoch's metric."""
        train, val = _loaders()
        result = fit_classifier(_net(), train, val, out_dir=tmp_path,
                                config=FitConfig(epochs=2, **QUIET))
        ckpt = load_checkpoint(result.best_checkpoint)
        assert ckpt["config"]["epochs"] == 2 and ckpt["config"]["scheduler"] == "cosine"
        assert "git_commit" in ckpt
        assert ckpt["best_metric"] == result.best_metric and ckpt["epoch"] == result.best_epoch

    def test_early_stopping_after_patience_epochs_without_improvement(self, tmp_path: Path) -> None:
        """With a learning rate too small to change anything, training stops after patience."""
        train, val = _loaders()
        result = fit_classifier(_net(), train, val, out_dir=tmp_path, val_metric="loss",
                                config=FitConfig(epochs=10, lr=1e-12, patience=2,
                                                 min_delta=1e-3, **QUIET))
        assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1

    def test_binary_scores_from_one_or_two_logits_agree(self) -> None:
        """A single logit and a two-logit head with the same margin give the same score."""
        one = classifier_scores(torch.tensor([[0.7]]), "binary")
        two = classifier_scores(torch.tensor([[0.0, 0.7]]), "binary")
        assert torch.allclose(one, two)


class _Pairs(Dataset[dict[str, torch.Tensor]]):
    """Source images and their negatives: a trivially learnable image-to-image task."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(5)
        self.src = torch.rand(n, 1, 8, 8, generator=g)

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.src[i], "target": 1.0 - self.src[i]}


class TestFitGan:
    def test_two_steps_run_and_validation_ncc_is_finite(self, tmp_path: Path) -> None:
        """pix2pix with two discriminators runs two steps; NCC and L1 are finite."""
        torch.manual_seed(0)
        generator = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1))
        discs = {name: nn.Sequential(nn.Conv2d(2, 4, 3, stride=2), nn.LeakyReLU(0.2),
                                     nn.Conv2d(4, 1, 3)) for name in ("a", "b")}
        loader = DataLoader(_Pairs(8), batch_size=4)
        for adversarial in ("bce", "lsgan"):
            result = fit_gan(generator, discs, loader, loader, out_dir=tmp_path / adversarial,
                             config=GanConfig(epochs=1, adversarial=adversarial, **QUIET))
            record = result.history[0]
            assert math.isfinite(record["val_ncc"]) and math.isfinite(record["val_l1"])
            assert {"train_g_adv", "train_g_l1", "train_d"} <= set(record)
            ckpt = load_checkpoint(result.last_checkpoint)
            assert set(ckpt["modules"]) == {"generator", "discriminator_a", "discriminator_b"}
            assert ckpt["config"]["l1_lambda"] == 100.0 and ckpt["config"]["betas"] == [0.5, 0.999]


class _Dots(Dataset[dict[str, torch.Tensor]]):
    """A bright dot per image; its keypoint is the dot's (x, y)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.points = torch.randint(2, 14, (n, 1, 2), generator=g).float()

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.points[i, 0].long()
        image = torch.zeros(1, 16, 16)
        image[0, y - 1 : y + 2, x - 1 : x + 2] = 1.0
        return {"image": image, "keypoints": self.points[i], "visible": torch.ones(1)}


class TestFitKeypoints:
    def test_heatmap_loss_goes_down_and_distance_is_reported(self, tmp_path: Path) -> None:
        """MSE and focal heatmap regression both reduce their loss; metrics are finite."""
        train = DataLoader(_Dots(64, 1), batch_size=16, shuffle=True, generator=torch_generator(0))
        val = DataLoader(_Dots(16, 2), batch_size=16)
        for loss in ("mse", "focal"):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(),
                                  nn.Conv2d(8, 1, 5, padding=2))
            result = fit_keypoints(model, train, val, out_dir=tmp_path / loss, val_metric="pck",
                                   config=KeypointConfig(epochs=6, lr=1e-2, heatmap_loss=loss,
                                                         sigma_px=1.5, patience=0, **QUIET))
            losses = [h["train_loss"] for h in result.history]
            assert losses[-1] < losses[0], loss
            assert math.isfinite(result.history[-1]["val_mean_distance"])
            assert 0.0 <= result.history[-1]["val_pck"] <= 1.0


class TestToyCommandLine:
    def test_fit_evaluate_and_card_write_their_files(self, tmp_path: Path) -> None:
        """`python -m train toy fit|evaluate|card` runs end to end on phantoms."""
        fit_dir, eval_dir, card_dir = tmp_path / "fit", tmp_path / "eval", tmp_path / "card"
        assert train_main(["toy", "fit", "--out", str(fit_dir), "--epochs", "2",
                           "--no-progress", "--seed", "0"]) == 0
        assert (fit_dir / "best.pt").is_file() and (fit_dir / "phantoms" / "manifest.csv").is_file()
        assert train_main(["toy", "evaluate", "--checkpoint", str(fit_dir / "best.pt"),
                           "--out", str(eval_dir)]) == 0
        metrics = json.loads((eval_dir / "metrics.json").read_text())
        assert 0.0 <= metrics["summary"]["auc"]["value"] <= 1.0
        assert train_main(["toy", "card", "--evaluation", str(eval_dir), "--checkpoint",
                           str(fit_dir / "best.pt"), "--out", str(card_dir)]) == 0
        assert "NOT FOR CLINICAL USE" in (card_dir / "card.md").read_text()

    def test_bad_manifest_is_reported_not_raised(self, tmp_path: Path, capsys) -> None:
        """A manifest error exits with status 2 and a message naming the problem."""
        bad = tmp_path / "m.csv"
        bad.write_text("path,colour\na,red\n")
        assert train_main(["toy", "fit", "--manifest", str(bad), "--out", str(tmp_path / "o"),
                           "--no-progress"]) == 2
        assert "unknown column 'colour'" in capsys.readouterr().err
