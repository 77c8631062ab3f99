import pytest
import torch

from kaseg.engine.metrics import ConfusionMatrix, metrics_from_confusion


def test_known_confusion_matrix():
    # rows = ground truth, cols = prediction
    mat = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    m = metrics_from_confusion(mat, ["a", "b", "c"])
    # IoU a = 5 / (6 + 7 - 5) = 5/8; b = 3 / (5 + 4 - 3) = 3/6; c absent everywhere -> None
    assert m["per_class_iou"] == {"a": pytest.approx(5 / 8), "b": pytest.approx(0.5), "c": None}
    assert m["miou"] == pytest.approx((5 / 8 + 0.5) / 2)
    assert m["pixel_acc"] == pytest.approx(8 / 11)
    assert m["mean_acc"] == pytest.approx((5 / 6 + 3 / 5) / 2)


def test_predicted_but_absent_class_counts_as_zero():
    mat = torch.tensor([[4, 0, 2], [0, 4, 0], [0, 0, 0]])  # class 2 only predicted
    m = metrics_from_confusion(mat)
    assert m["per_class_iou"]["2"] == 0.0
    assert m["miou"] == pytest.approx((4 / 6 + 1 + 0) / 3)


def test_update_from_tensors_with_ignore():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred[None], target[None])
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert torch.equal(cm.mat, expected)
    m = cm.compute()
    assert m["pixels"] == 6
    # IoU: 0 -> 1/(2+2-1)=1/3; 1 -> 2/(2+3-2)=2/3; 2 -> 1/(2+1-1)=1/2
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_update_accepts_logits_and_accumulates():
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 1, 0, 1] = 1.0  # argmax: [[0, 1]]
    cm = ConfusionMatrix(2)
    cm.update(logits, torch.tensor([[[0, 0]]]))
    cm.update(logits, torch.tensor([[[0, 0]]]))
    assert cm.mat.tolist() == [[2, 2], [0, 0]]


def test_out_of_range_target_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        ConfusionMatrix(2).update(torch.tensor([0, 1]), torch.tensor([0, 5]))
