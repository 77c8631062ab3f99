"""A fixed pool of augmented views: drawn per image as a pure function of (seed, image), each
sample one of its image's views chosen by the sample's own seeded stream, cut exactly as
recorded."""

import numpy as np
import pytest
import torch

from kaseg.core.errors import KasegError
from kaseg.data import build_dataset
from kaseg.data.transforms import View
from kaseg.data.views import PoolViews, draw_views
from kaseg.engine.experiment import load_config


def _train_set(root):
    cfg = load_config(None, [f"data.root={root}", "data.dataset=folder", "data.crop_size=16",
                             "data.scale_min=0.75", "data.scale_max=1.25"])
    return build_dataset(cfg.data, cfg.data.train_split, train=True)


def test_a_seed_fixes_the_order_of_image_and_view_draws(folder_dataset):
    ds = _train_set(folder_dataset)
    views = np.stack([draw_views(ds.transform, 24, 32, 4, 0, i) for i in range(len(ds))])
    again = np.stack([draw_views(ds.transform, 24, 32, 4, 0, i) for i in range(len(ds))])
    other = draw_views(ds.transform, 24, 32, 4, 1, 0)
    assert np.array_equal(views, again) and not np.array_equal(views[0], other)
    pool = PoolViews(ds, views)
    torch.manual_seed(7)
    first = [pool[i][0] for i in range(6)]
    torch.manual_seed(7)
    assert all(torch.equal(a, pool[i][0]) for i, a in enumerate(first))
    # every sample is one of its image's recorded views, cut exactly as recorded
    img, mask = pool.view(2, 3)
    torch.manual_seed(123)
    direct = ds.transform.apply(*ds.raw(2), View.from_row(views[2, 3]))
    assert torch.equal(img, direct[0]) and torch.equal(mask, direct[1])


def test_a_pool_for_other_images_is_refused_naming_the_image(folder_dataset):
    ds = _train_set(folder_dataset)
    views = np.stack([draw_views(ds.transform, 24, 32, 2, 0, i) for i in range(len(ds))])
    with pytest.raises(KasegError, match="views of 5 images, the training split has 6"):
        PoolViews(ds, views[:5])
    sizes = [[24, 32]] * len(ds)
    sizes[4] = [30, 40]
    pool = PoolViews(ds, views, sizes=sizes, source="cache X")
    pool.view(3, 1)
    with pytest.raises(KasegError, match="cache X: image 'img4' is 24 x 32, its views were drawn "
                                         "for 30 x 40"):
        pool.view(4, 0)
