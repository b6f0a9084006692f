"""GLUE metrics: hand-computed tiny cases, and agreement with scikit-learn / scipy on random ones."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from ddk_fast.data import DataError, compute_metrics, get_task
from ddk_fast.data.metrics import average_ranks, f1_binary, matthews_corrcoef, pearson, spearman


def test_hand_computed_binary_case():
    # labels 1 1 0 0, predictions 1 1 1 0: TP=2 FP=1 TN=1 FN=0
    predictions, labels = [1, 1, 1, 0], [1, 1, 0, 0]
    assert matthews_corrcoef(predictions, labels) == pytest.approx((2 * 1 - 1 * 0) / math.sqrt(3 * 2 * 2 * 1))
    assert f1_binary(predictions, labels) == pytest.approx(2 * 2 / (2 * 2 + 1))
    out = compute_metrics("mrpc", predictions, labels)
    assert out == pytest.approx({"f1": 0.8, "accuracy": 0.75, "score": 0.775})
    assert compute_metrics("cola", [1, 0, 1, 0], [1, 1, 0, 0])["mcc"] == 0.0  # TP=TN=FP=FN=1


def test_hand_computed_correlations():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = 0 1 2, y = 0 0 3: centred x = -1 0 1, y = -1 -1 2 -> cov 3, |x| sqrt2, |y| sqrt6
    assert pearson([0, 1, 2], [0, 0, 3]) == pytest.approx(3 / math.sqrt(2 * 6))
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    # monotone but not linear: spearman 1, pearson below 1
    out = compute_metrics("stsb", [1.0, 2.0, 10.0], [0.5, 1.0, 1.5])
    assert out["spearman"] == pytest.approx(1.0) and out["pearson"] < 0.99
    assert out["score"] == pytest.approx((out["pearson"] + out["spearman"]) / 2)


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_sklearn_and_scipy(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=57)
    predictions = np.where(rng.random(57) < 0.7, labels, 1 - labels)
    assert matthews_corrcoef(predictions, labels) == pytest.approx(skm.matthews_corrcoef(labels, predictions))
    assert f1_binary(predictions, labels) == pytest.approx(skm.f1_score(labels, predictions))
    three = rng.integers(0, 3, size=57), rng.integers(0, 3, size=57)
    assert matthews_corrcoef(*three) == pytest.approx(skm.matthews_corrcoef(three[1], three[0]))
    gold = rng.integers(0, 11, size=57) / 2.0  # many ties, like STS-B scores
    predicted = gold + rng.normal(0, 1.0, size=57)
    predicted[:10] = np.round(predicted[:10])  # ties in predictions too
    assert pearson(predicted, gold) == pytest.approx(stats.pearsonr(predicted, gold)[0])
    assert spearman(predicted, gold) == pytest.approx(stats.spearmanr(predicted, gold)[0])
    np.testing.assert_array_equal(average_ranks(gold), stats.rankdata(gold))


def test_logits_and_class_ids_give_the_same_result():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0], [1.0, 2.0, 0.5]])
    labels = torch.tensor([1, 0, 1, 1])
    from_logits = compute_metrics("mnli", logits, labels)
    assert from_logits == compute_metrics("mnli", logits.argmax(-1), labels)
    assert from_logits == compute_metrics("mnli", [1, 0, 2, 1], [1, 0, 1, 1])
    assert from_logits == {"accuracy": 0.75, "score": 0.75}
    assert compute_metrics("mnli", logits.bfloat16(), labels) == from_logits
    scores = torch.tensor([[1.0], [2.0], [3.0]])
    assert compute_metrics("stsb", scores, [1.0, 2.0, 3.5]) == compute_metrics("stsb", scores[:, 0], [1.0, 2.0, 3.5])


def test_every_task_returns_its_metrics_and_score():
    rng = np.random.default_rng(0)
    for name in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"):
        spec = get_task(name)
        labels = rng.random(20) * 5 if spec.is_regression else rng.integers(0, spec.num_labels, 20)
        predictions = rng.random(20) * 5 if spec.is_regression else rng.normal(size=(20, spec.num_labels))
        out = compute_metrics(name, predictions, labels)
        assert set(out) == set(spec.metric_names) | {"score"} and spec.main_metric in out
        assert out["score"] == pytest.approx(np.mean([out[m] for m in spec.metric_names]))
        assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())


def test_degenerate_inputs_give_zero_not_nan():
    assert compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0, "score": 0.0}
    assert compute_metrics("cola", [1, 1, 1], [1, 0, 1])["mcc"] == 0.0
    assert compute_metrics("mrpc", [0, 0], [0, 0])["f1"] == 0.0  # sklearn's zero_division default


def test_shape_errors():
    with pytest.raises(DataError, match=r"expected logits \[N, 2\]"):
        compute_metrics("sst2", np.zeros((4, 3)), [0, 1, 0, 1])
    with pytest.raises(DataError, match="4 rows but labels has 3"):
        compute_metrics("sst2", [0, 1, 0, 1], [0, 1, 0])
    with pytest.raises(DataError, match="non-integer floats"):
        compute_metrics("sst2", [0.2, 0.9], [0, 1])
    with pytest.raises(DataError, match="empty"):
        compute_metrics("sst2", [], [])
    with pytest.raises(DataError, match=r"expected \[N\] or \[N, 1\]"):
        compute_metrics("stsb", np.zeros((3, 2)), [0.0, 1.0, 2.0])
