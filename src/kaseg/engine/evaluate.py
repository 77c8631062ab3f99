"""Evaluation of a segmentation model on a dataset: confusion-matrix metrics of the argmax of
:func:`kaseg.nets.inference.predict` (single scale at full resolution by default; sliding window and
multi-scale + flip on request)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..core.distributed import is_distributed, shard
from ..nets.inference import predict
from .metrics import ConfusionMatrix
from ..nets.models import SegModel
from ..core.runtime import autocast, eval_generator, inputs_for, on_device


@torch.no_grad()
def evaluate(model: SegModel, dataset, batch_size: int = 1, device: str | torch.device = "cpu",
             amp: bool = False, num_workers: int = 0, progress: bool = False,
             scales: tuple[float, ...] = (1.0,), flip: bool = False, window=None,
             stride=None) -> dict:
    """Confusion-matrix metrics over ``dataset`` (reduced across processes when distributed).
    The model is moved to ``device`` and the images to the model (:func:`kaseg.core.runtime.on_device`);
    the global RNG is not touched."""
    device = torch.device(device)
    on_device(model, device)
    flip_pairs = getattr(dataset, "flip_pairs", ())
    was_training = model.training
    model.eval()
    if is_distributed():  # each rank its share, every sample once; the matrices are summed
        dataset_part = Subset(dataset, shard(len(dataset)))
    else:
        dataset_part = dataset
    loader = DataLoader(dataset_part, batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, generator=eval_generator())
    cm = ConfusionMatrix(model.num_classes, device=device)
    for images, targets in tqdm(loader, desc="eval", disable=not progress, leave=False):
        images, targets = inputs_for(model, images, targets)
        with autocast(device, amp):
            scores = predict(model, images, scales, flip, window, stride, flip_pairs)
        cm.update(scores.float().argmax(1), targets)
    cm.reduce()
    model.train(was_training)
    return cm.compute(getattr(dataset, "class_names", None))
