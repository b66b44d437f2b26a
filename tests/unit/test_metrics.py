"""Each metric against a hand-computed value or a textbook example (and DeLong's AUC against
scikit-learn's, which has no variance)."""

from __future__ import annotations

import itertools
from typing import Any, cast

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk

from train.common import metrics as M

# A tiny case with a tie, worked by hand from the structural components (DeLong 1988):
# psi(x, y) = 1 if x > y, 1/2 if x == y, 0 otherwise; V10 = mean over negatives, V01 = mean over
# positives. V10 = [1, 1, 5/8, 5/8], V01 = [1/2, 3/4, 1, 1], AUC = 13/16,
# s10 = 0.140625 / 3, s01 = 0.171875 / 3, var = s10 / 4 + s01 / 4 = 5/192.
POS = [0.9, 0.7, 0.5, 0.5]
NEG = [0.6, 0.5, 0.3, 0.1]
Y_TINY = np.array([1, 1, 1, 1, 0, 0, 0, 0])
S_TINY = np.array(POS + NEG)


def _psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def _components_by_definition(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = s[y == 1], s[y == 0]
    v10 = np.array([np.mean([_psi(x, z) for z in neg]) for x in pos])
    v01 = np.array([np.mean([_psi(x, z) for x in pos]) for z in neg])
    return v10, v01


def _random_binary(seed: int, n: int = 150) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(size=n) + 1.2 * y, 1)  # rounding makes ties
    return y, s


class TestRocAucDelong:
    def test_tiny_case_matches_hand_worked_components(self) -> None:
        """AUC 13/16 and DeLong variance 5/192 on the hand-worked eight-case example."""
        r = M.roc_auc_delong(Y_TINY, S_TINY)
        assert r.auc == pytest.approx(13 / 16)
        assert r.variance == pytest.approx(5 / 192)
        half = stats.norm.ppf(0.975) * np.sqrt(5 / 192)
        assert (r.ci_low, r.ci_high) == pytest.approx((13 / 16 - half, 1.0))  # upper end clipped

    def test_fast_components_equal_the_definition(self) -> None:
        """Midrank V10/V01 equal the pairwise-psi definition, ties included."""
        y, s = _random_binary(1, 60)
        _, v10, v01 = M.delong_components(y, s)
        d10, d01 = _components_by_definition(y, s)
        np.testing.assert_allclose(v10[0], d10)
        np.testing.assert_allclose(v01[0], d01)
        expected_var = d10.var(ddof=1) / d10.size + d01.var(ddof=1) / d01.size
        assert M.roc_auc_delong(y, s).variance == pytest.approx(expected_var)

    def test_auc_equals_sklearn(self) -> None:
        """The AUC is scikit-learn's roc_auc_score, with ties."""
        for seed in range(5):
            y, s = _random_binary(seed)
            assert M.roc_auc_delong(y, s).auc == pytest.approx(sk.roc_auc_score(y, s))

    def test_hanley_mcneil_rating_example(self) -> None:
        """Hanley & McNeil 1982 five-point CT ratings (58 normal, 51 abnormal): AUC 0.893, SE near
        their 0.032 (their SE uses an exponential approximation, so only close)."""
        normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
        abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
        y = np.r_[np.zeros(58), np.ones(51)]
        r = M.roc_auc_delong(y, np.r_[normal, abnormal])
        assert round(r.auc, 3) == 0.893
        assert r.se == pytest.approx(0.032, abs=0.002)

    def test_rejects_a_single_class(self) -> None:
        """An AUC needs both classes."""
        with pytest.raises(ValueError, match="positive and one negative"):
            M.roc_auc_delong([1, 1, 1], [0.1, 0.2, 0.3])

    def test_roc_curve_by_hand(self) -> None:
        """Scores .9(+) .8(-) .7(+) .7(-) .6(-): a point per distinct score from (0, 0), ties in one step."""
        fpr, tpr, thr = M.roc_curve([1, 0, 1, 0, 0], [0.9, 0.8, 0.7, 0.7, 0.6])
        np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 1])
        np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
        np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.7, 0.6])


class TestDelongTest:
    def test_matches_definition_on_paired_components(self) -> None:
        """z uses var(V10a - V10b)/m + var(V01a - V01b)/n from the definition."""
        rng = np.random.default_rng(7)
        y = rng.integers(0, 2, 80)
        a = y + rng.normal(size=80)
        b = 0.5 * y + rng.normal(size=80)
        a10, a01 = _components_by_definition(y, a)
        b10, b01 = _components_by_definition(y, b)
        var = np.var(a10 - b10, ddof=1) / a10.size + np.var(a01 - b01, ddof=1) / a01.size
        diff = a10.mean() - b10.mean()
        t = M.delong_test(y, a, b)
        assert t.difference == pytest.approx(diff)
        assert t.z == pytest.approx(diff / np.sqrt(var))
        assert t.p == pytest.approx(2 * stats.norm.sf(abs(diff / np.sqrt(var))))

    def test_identical_scores_give_p_one(self) -> None:
        """The same model against itself is no different."""
        y, s = _random_binary(2)
        t = M.delong_test(y, s, s)
        assert (t.z, t.p) == (0.0, 1.0)

    def test_swapping_models_flips_z(self) -> None:
        """The test is antisymmetric in its two models."""
        y, s = _random_binary(4)
        other = s + np.random.default_rng(4).normal(size=s.size)
        ab, ba = M.delong_test(y, s, other), M.delong_test(y, other, s)
        assert ab.z == pytest.approx(-ba.z)
        assert ab.p == pytest.approx(ba.p)


class TestMultiClassAuc:
    def test_one_vs_rest_equals_sklearn(self) -> None:
        """Per-class AUCs equal scikit-learn's multi_class='ovr', average=None."""
        rng = np.random.default_rng(0)
        y = rng.integers(0, 4, 200)
        p = rng.dirichlet(np.ones(4), 200)
        p[np.arange(200), y] += 0.3
        p /= p.sum(axis=1, keepdims=True)
        ours = [r.auc for r in M.one_vs_rest_auc(y, p) if r is not None]
        np.testing.assert_allclose(ours, sk.roc_auc_score(y, p, multi_class="ovr", average=None))

    def test_absent_class_has_no_auc(self) -> None:
        """A class nobody has gives None, not a crash."""
        y = np.array([0, 0, 1, 1])
        p = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
        res = M.one_vs_rest_auc(y, p)
        assert res[2] is None and res[0] is not None and res[0].auc == 1.0

    def test_cumulative_auc_splits_at_each_grade(self) -> None:
        """Grade >= g against < g for every cut, scored by one ordinal score."""
        y = np.array([0, 0, 1, 1, 2, 2])
        score = np.array([0.1, 0.3, 0.2, 0.6, 0.5, 0.9])
        res = M.cumulative_auc(y, score)
        assert [r.auc for r in res if r] == [sk.roc_auc_score(y >= 1, score), sk.roc_auc_score(y >= 2, score)]


class TestPrecisionRecall:
    def test_tied_scores_make_one_threshold(self) -> None:
        """A positive and a negative tied at .5: one point, P = 1/2 at R = 1, so AP = 1/2."""
        assert M.average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)

    def test_curve_runs_from_the_highest_threshold(self) -> None:
        """Scores .9(+) .8(-) .7(+): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1."""
        prec, rec, thr = M.precision_recall_curve([1, 0, 1], [0.9, 0.8, 0.7])
        np.testing.assert_allclose(prec, [1, 0.5, 2 / 3])
        np.testing.assert_allclose(rec, [0.5, 0.5, 1])
        np.testing.assert_allclose(thr, [0.9, 0.8, 0.7])

    def test_average_precision_by_hand(self) -> None:
        """Scores .9(+) .8(-) .7(+) .6(-): AP = 1/2 * 1 + 1/2 * 2/3 = 5/6."""
        assert M.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6]) == pytest.approx(5 / 6)


class TestThresholdMetrics:
    def test_point_values_equal_hand_counts_and_sklearn(self) -> None:
        """tp=3 fp=1 tn=3 fn=1 gives 0.75 everywhere; recall, precision, F1 as scikit-learn."""
        y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
        s = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.4, 0.3, 0.1])
        tm = M.threshold_metrics(y, s, 0.5, n_boot=200, seed=0)
        assert tm.counts == {"tp": 3, "fp": 1, "tn": 3, "fn": 1}
        for name in M.THRESHOLD_METRICS:
            assert tm.metrics[name].value == pytest.approx(0.75), name
        y_rand, s_rand = _random_binary(9)
        tm = M.threshold_metrics(y_rand, s_rand, 0.5, n_boot=100, seed=0)
        pred = s_rand >= 0.5
        assert tm.metrics["sensitivity"].value == pytest.approx(sk.recall_score(y_rand, pred))
        assert tm.metrics["specificity"].value == pytest.approx(sk.recall_score(1 - y_rand, ~pred))
        assert tm.metrics["precision"].value == pytest.approx(sk.precision_score(y_rand, pred))
        assert tm.metrics["f1"].value == pytest.approx(sk.f1_score(y_rand, pred))
        assert tm.metrics["accuracy"].value == pytest.approx(sk.accuracy_score(y_rand, pred))

    def test_bootstrap_is_seeded_and_brackets_the_value(self) -> None:
        """Same seed, same CI; a different seed moves it; the CI holds the point value."""
        y, s = _random_binary(11, 300)
        a = M.threshold_metrics(y, s, 0.5, n_boot=500, seed=1)
        b = M.threshold_metrics(y, s, 0.5, n_boot=500, seed=1)
        c = M.threshold_metrics(y, s, 0.5, n_boot=500, seed=2)
        assert a == b
        assert a.metrics["sensitivity"] != c.metrics["sensitivity"]
        for est in a.metrics.values():
            assert est.ci_low <= est.value <= est.ci_high

    def test_youden_point_by_hand(self) -> None:
        """J is highest (2/3) at >= 0.6 and at >= 0.35; the tie goes to the higher threshold."""
        y = [0, 0, 1, 0, 1, 1]
        s = [0.1, 0.3, 0.35, 0.5, 0.6, 0.9]
        assert M.youden_threshold(y, s) == pytest.approx(0.6)
        assert M.youden_threshold([0, 0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(0.3)  # J = 2/3
        ym = M.youden_metrics(y, s, n_boot=50)
        assert ym.metrics["sensitivity"].value == pytest.approx(2 / 3)
        assert ym.metrics["specificity"].value == pytest.approx(1.0)

    def test_confusion_matrix_by_hand(self) -> None:
        """Rows true, columns predicted, in the order of the labels given; unlisted labels are left out."""
        t, p = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 3]
        np.testing.assert_array_equal(M.confusion_matrix(t, p), [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0]])
        np.testing.assert_array_equal(M.confusion_matrix(t, p, [2, 1, 0]), [[1, 0, 1], [0, 1, 0], [0, 1, 1]])

    def test_bootstrap_ci_of_any_statistic(self) -> None:
        """The generic bootstrap gives the statistic on all cases as its value."""
        y = np.array([0, 1] * 20)
        v = np.arange(40, dtype=float)
        est = M.bootstrap_ci(lambda i: float(v[i].mean()), y, n_boot=200, seed=0)
        assert est.value == pytest.approx(19.5)
        assert est.ci_low < 19.5 < est.ci_high


class TestCalibration:
    def test_bins_by_hand_with_empty_bins_as_nan(self) -> None:
        """Four equal bins: 0 and .25 fall in the first (an edge belongs to the bin below), 1.0 in the
        last, and the empty third bin is NaN with count 0."""
        bins = M.calibration_curve([0, 1, 1, 1, 0], [0.0, 0.25, 0.3, 1.0, 0.9], n_bins=4)
        np.testing.assert_allclose(bins.edges, [0, 0.25, 0.5, 0.75, 1.0])
        np.testing.assert_array_equal(bins.counts, [2, 1, 0, 2])
        np.testing.assert_allclose(bins.fraction_positive, [0.5, 1.0, np.nan, 0.5])
        np.testing.assert_allclose(bins.mean_predicted, [0.125, 0.3, np.nan, 0.95])

    def test_quantile_bins_hold_equal_counts(self) -> None:
        """Equal-count bins over eight distinct probabilities hold two cases each."""
        p = np.linspace(0.05, 0.95, 8)
        bins = M.calibration_curve([0, 0, 0, 1, 0, 1, 1, 1], p, n_bins=4, strategy="quantile")
        np.testing.assert_array_equal(bins.counts, [2, 2, 2, 2])
        np.testing.assert_allclose(bins.fraction_positive, [0, 0.5, 0.5, 1])

    def test_brier_and_ece_by_hand(self) -> None:
        """Predicting 0.8 for two cases, one positive: Brier 0.34, ECE 0.3."""
        assert M.brier_score([1, 0], [0.8, 0.8]) == pytest.approx(0.34)
        assert M.calibration_curve([1, 0], [0.8, 0.8]).ece == pytest.approx(0.3)


class TestAgreement:
    SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])

    def test_icc_shrout_fleiss_table_2(self) -> None:
        """Shrout & Fleiss 1979, 6 targets x 4 judges: ICC(1,1)=.17, ICC(2,1)=.29, ICC(3,1)=.71."""
        r = M.icc(self.SHROUT_FLEISS)
        assert round(r.icc1_1.value, 2) == 0.17
        assert round(r.icc2_1.value, 2) == 0.29
        assert round(r.icc3_1.value, 2) == 0.71
        for est in (r.icc1_1, r.icc2_1, r.icc3_1):
            assert est.ci_low < est.value < est.ci_high

    def test_icc_of_perfect_agreement_is_one(self) -> None:
        """Raters who agree exactly give ICC 1."""
        x = np.repeat(np.arange(10.0)[:, None], 3, axis=1)
        x[:, 0] += 0.0
        r = M.icc(x + np.random.default_rng(0).normal(0, 1e-9, x.shape))
        assert r.icc2_1.value == pytest.approx(1.0) and r.icc3_1.value == pytest.approx(1.0)

    def test_icc3_ignores_a_constant_rater_offset_icc2_does_not(self) -> None:
        """Consistency (3,1) is blind to a rater's bias; absolute agreement (2,1) is not."""
        rng = np.random.default_rng(1)
        truth = rng.normal(size=30)
        x = np.c_[truth + rng.normal(0, 0.3, 30), truth + rng.normal(0, 0.3, 30)]
        shifted = x + np.array([0.0, 2.0])
        assert M.icc(shifted).icc3_1.value == pytest.approx(M.icc(x).icc3_1.value)
        assert M.icc(shifted).icc2_1.value < M.icc(x).icc2_1.value - 0.3

    def test_cohen_kappa_weightings_by_hand(self) -> None:
        """Raters 0,1,2 vs 0,2,2: observed weighted disagreement 1 against chance 2 (unweighted),
        3 (linear) and 5 (quadratic), so kappa = 1/2, 2/3 and 4/5."""
        a, b = [0, 1, 2], [0, 2, 2]
        assert M.cohen_kappa(a, b) == pytest.approx(0.5)
        assert M.cohen_kappa(a, b, "linear") == pytest.approx(2 / 3)
        assert M.cohen_kappa(a, b, "quadratic") == pytest.approx(0.8)

    def test_cohen_kappa_of_one_category_is_nan(self) -> None:
        """Raters who only ever use one category give no kappa (chance agreement is total)."""
        assert np.isnan(M.cohen_kappa([1, 1, 1], [1, 1, 1]))
        with pytest.raises(ValueError, match="weights"):
            M.cohen_kappa([0, 1], [0, 1], cast(Any, "cubic"))  # a bad value on purpose

    def test_cohen_kappa_by_hand(self) -> None:
        """Two raters, 10 cases, po = 0.7, pe = 0.5: kappa = 0.4."""
        a = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
        b = [1, 1, 1, 1, 0, 1, 0, 0, 0, 1]
        # po = 7/10; marginals a 5/5, b 6/4 -> pe = .5*.6 + .5*.4 = .5
        assert M.cohen_kappa(a, b) == pytest.approx(0.4)

    def test_fleiss_kappa_fleiss_1971_worked_example(self) -> None:
        """The Wikipedia / Fleiss 1971 example: 10 subjects, 14 raters, 5 categories, kappa 0.210."""
        table = [
            [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
        ]
        assert round(M.fleiss_kappa(table), 3) == 0.210

    def test_category_counts_feed_fleiss(self) -> None:
        """Ratings per rater become counts per category; perfect agreement gives 1."""
        ratings = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2], [1, 1, 1]])
        counts = M.category_counts(ratings)
        np.testing.assert_array_equal(counts.sum(axis=1), [3, 3, 3, 3])
        assert M.fleiss_kappa(counts) == pytest.approx(1.0)

    def test_fleiss_rejects_unequal_rater_counts(self) -> None:
        """Every subject must have the same number of ratings."""
        with pytest.raises(ValueError, match="same number"):
            M.fleiss_kappa([[2, 1], [1, 1]])


class TestImageSimilarity:
    @staticmethod
    def _image(seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:48, 0:48]
        return np.sin(xx / 5.0) + np.cos(yy / 7.0) + 0.2 * rng.normal(size=(48, 48))

    def test_ncc_of_an_image_with_itself_and_its_negative(self) -> None:
        """NCC is 1 with itself and -1 with its negative."""
        img = self._image()
        assert M.ncc(img, img) == pytest.approx(1.0)
        assert M.ncc(img, -img) == pytest.approx(-1.0)

    def test_ncc_is_invariant_to_affine_intensity(self) -> None:
        """Gain and offset do not change NCC; a negative gain flips its sign."""
        a, b = self._image(0), self._image(1)
        base = M.ncc(a, b)
        assert M.ncc(3.0 * a + 7.0, b) == pytest.approx(base)
        assert M.ncc(a, 0.5 * b - 2.0) == pytest.approx(base)
        assert M.ncc(-2.0 * a + 1.0, b) == pytest.approx(-base)

    def test_ncc_by_hand_and_constant_image(self) -> None:
        """[1,2,3] against [1,3,2] is 0.5; a constant image has no NCC."""
        assert M.ncc([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
        assert np.isnan(M.ncc(np.ones((4, 4)), self._image()[:4, :4]))

    def test_ncc_summary_is_mean_and_sd(self) -> None:
        """Mean and sample SD over pairs."""
        a = self._image(0)
        mean, sd = M.ncc_summary([(a, a), (a, -a)])
        assert mean == pytest.approx(0.0) and sd == pytest.approx(np.sqrt(2.0))

    def test_ssim_of_identical_images_is_one(self) -> None:
        """SSIM of an image with itself is 1."""
        img = self._image()
        assert M.ssim(img, img) == pytest.approx(1.0)

    def test_ssim_equals_a_brute_force_windowed_computation(self) -> None:
        """On 16x16 images every kept window lies inside the image, so SSIM is the mean of the
        Wang et al. formula over explicit 11x11 Gaussian-weighted windows (sigma 1.5)."""
        rng = np.random.default_rng(8)
        a = rng.random((16, 16))
        b = 0.7 * a + 0.3 * rng.random((16, 16))
        taps = np.exp(-(np.arange(-5, 6) ** 2) / (2 * 1.5**2))
        w = np.outer(taps, taps) / taps.sum() ** 2
        c1, c2 = 0.01**2, 0.03**2
        values = []
        for i, j in itertools.product(range(5, 11), repeat=2):
            x, y = a[i - 5:i + 6, j - 5:j + 6], b[i - 5:i + 6, j - 5:j + 6]
            mx, my = np.sum(w * x), np.sum(w * y)
            vx, vy = np.sum(w * x * x) - mx**2, np.sum(w * y * y) - my**2
            cxy = np.sum(w * x * y) - mx * my
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        assert M.ssim(a, b, data_range=1.0) == pytest.approx(float(np.mean(values)), rel=1e-9)

    def test_ssim_of_constant_images_is_the_luminance_term(self) -> None:
        """Flat 0.5 against flat 0.25 (range 1): (2*.5*.25 + C1) / (.5^2 + .25^2 + C1)."""
        c1 = 0.01**2
        expected = (2 * 0.5 * 0.25 + c1) / (0.25 + 0.0625 + c1)
        assert M.ssim(np.full((32, 32), 0.5), np.full((32, 32), 0.25), data_range=1.0) == pytest.approx(expected)

    def test_ssim_falls_with_noise_and_is_symmetric(self) -> None:
        """More noise, lower SSIM; SSIM(a, b) = SSIM(b, a)."""
        img = self._image()
        rng = np.random.default_rng(4)
        light = img + rng.normal(0, 0.1, img.shape)
        heavy = img + rng.normal(0, 1.0, img.shape)
        rng_all = float(img.max() - img.min())
        s_light = M.ssim(img, light, data_range=rng_all)
        s_heavy = M.ssim(img, heavy, data_range=rng_all)
        assert 1.0 > s_light > s_heavy
        assert M.ssim(heavy, img, data_range=rng_all) == pytest.approx(s_heavy)


class TestDetection:
    def test_iou_by_hand(self) -> None:
        """Unit overlap of two 2x2 boxes offset by 1 is 1/7; apart or touching is 0."""
        assert M.iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
        assert M.iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
        assert M.iou((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0
        assert M.iou((0, 0, 4, 4), (0, 0, 4, 4)) == 1.0

    def test_ap_at_iou_half_hand_case(self) -> None:
        """TP, FP, TP, duplicate-FP against 3 ground truths: AP = 1/3 * 1 + 1/3 * 2/3 = 5/9."""
        gts = [
            M.Box("i1", "lesion", 0, 0, 10, 10),
            M.Box("i2", "lesion", 0, 0, 10, 10),
            M.Box("i2", "lesion", 20, 20, 30, 30),
            M.Box("i1", "joint", 40, 40, 50, 50),
        ]
        dets = [
            M.Box("i1", "lesion", 0, 0, 10, 10, 0.9),  # TP
            M.Box("i2", "lesion", 50, 50, 60, 60, 0.8),  # FP, no overlap
            M.Box("i2", "lesion", 0, 0, 10, 9, 0.7),  # TP, IoU 0.9
            M.Box("i1", "lesion", 1, 1, 10, 10, 0.6),  # FP, duplicate of a taken box
            M.Box("i3", "ghost", 0, 0, 5, 5, 0.5),  # a class with no ground truth
        ]
        res = M.detection_ap(dets, gts, 0.5)
        assert res.per_class["lesion"] == pytest.approx(5 / 9)
        assert res.per_class["joint"] == 0.0
        assert np.isnan(res.per_class["ghost"])
        assert res.mean_ap == pytest.approx((5 / 9 + 0.0) / 2)

    def test_low_overlap_is_a_false_positive(self) -> None:
        """IoU below 0.5 does not count; at a lower threshold it does."""
        gts = [M.Box("i", "a", 0, 0, 10, 10)]
        dets = [M.Box("i", "a", 5, 0, 15, 10, 0.9)]  # IoU 1/3
        assert M.detection_ap(dets, gts, 0.5).per_class["a"] == 0.0
        assert M.detection_ap(dets, gts, 0.3).per_class["a"] == 1.0

    def test_voc_all_point_interpolation(self) -> None:
        """The precision envelope is integrated over every recall step."""
        assert M.voc_ap([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_midrank_gives_ties_their_mean_rank() -> None:
    """Ties share the mean of the ranks they span."""
    np.testing.assert_allclose(M.midrank([3, 1, 3, 2]), [3.5, 1, 3.5, 2])


def test_all_estimates_are_plain_floats() -> None:
    """Results serialise without numpy scalars."""
    r = M.roc_auc_delong(Y_TINY, S_TINY)
    for v in (r.auc, r.variance, r.ci_low, r.ci_high):
        assert type(v) is float
    for v in itertools.chain.from_iterable(
        (e.value, e.ci_low, e.ci_high) for e in M.threshold_metrics(Y_TINY, S_TINY, 0.5, n_boot=20).metrics.values()
    ):
        assert type(v) is float
