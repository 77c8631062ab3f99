"""Confusion-matrix segmentation metrics (mIoU, per-class IoU, pixel accuracy).

IoU is averaged over the classes that occur (in the ground truth or the prediction): a class with
an empty union has no IoU (None), not 0 and not NaN, so mIoU is always defined.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..core.labels import IGNORE_INDEX


class ConfusionMatrix:
    """Rows: ground truth; columns: prediction. Filled with one ``bincount`` per batch."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device=None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``: class indices (or logits N x C x H x W); ``target``: indices, same size."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        keep = target != self.ignore_index
        t, p = target[keep].long(), pred[keep].long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_classes):
            raise ValueError(f"target has labels outside 0..{self.num_classes - 1}")
        n = self.num_classes
        self.mat += torch.bincount(t * n + p, minlength=n * n).reshape(n, n).to(self.mat.device)

    def reduce(self) -> None:
        """Sum over processes, so every rank reports the metrics of the whole dataset."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat)

    def compute(self, class_names=None) -> dict:
        return metrics_from_confusion(self.mat, class_names)


def metrics_from_confusion(mat: torch.Tensor, class_names=None) -> dict:
    mat = mat.double().cpu()
    tp = mat.diag()
    gt, pr = mat.sum(1), mat.sum(0)
    union = gt + pr - tp
    valid = union > 0
    iou = torch.where(valid, tp / union.clamp(min=1), torch.zeros_like(tp))
    present = gt > 0
    acc = torch.where(present, tp / gt.clamp(min=1), torch.zeros_like(tp))
    total = mat.sum()
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(tp))]
    return {
        "miou": float(iou[valid].mean()) if valid.any() else 0.0,
        "pixel_acc": float(tp.sum() / total) if total > 0 else 0.0,
        "mean_acc": float(acc[present].mean()) if present.any() else 0.0,
        "per_class_iou": {n: (float(v) if ok else None) for n, v, ok in zip(names, iou, valid)},
        "pixels": int(total),
    }


def format_table(metrics: dict, title: str = "") -> str:
    """A plain-text table: one row per class, then the summary."""
    rows = [f"{'class':<20} {'IoU':>7}"]
    for name, v in metrics["per_class_iou"].items():
        rows.append(f"{name:<20} {('  n/a' if v is None else f'{100 * v:7.2f}'):>7}")
    rows.append("-" * 28)
    rows.append(f"{'mIoU':<20} {100 * metrics['miou']:7.2f}")
    rows.append(f"{'pixel acc':<20} {100 * metrics['pixel_acc']:7.2f}")
    rows.append(f"{'mean acc':<20} {100 * metrics['mean_acc']:7.2f}")
    return (title + "\n" if title else "") + "\n".join(rows)
