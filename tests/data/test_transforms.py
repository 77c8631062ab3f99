import numpy as np
import torch

from kaseg.data.transforms import IGNORE_INDEX, TrainTransform, pad_crop


def _blocks(h=48, w=64, block=8):
    """Mask of block ids, image whose red channel encodes the id (id * 20)."""
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy // block) * (w // block) + xx // block) % 12
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = mask * 20
    image[..., 1] = (xx * 255 // (w - 1))  # left-to-right ramp: catches a flip of one side only
    return image, mask.astype(np.uint8)


def _interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood has one label (bilinear blending cannot touch them)."""
    m = mask.float()[None, None]
    mx = torch.nn.functional.max_pool2d(m, 3, 1, 1)
    mn = -torch.nn.functional.max_pool2d(-m, 3, 1, 1)
    inner = ((mx == mn)[0, 0]) & (mask != IGNORE_INDEX)
    inner[[0, -1], :] = False  # a crop's edge may have unseen neighbours of another label
    inner[:, [0, -1]] = False
    return inner


def test_pattern_survives_scale_crop_flip():
    image, mask = _blocks()
    torch.manual_seed(0)
    checked = 0
    for scale in (0.5, 1.0, 1.7, 2.0):
        tf = TrainTransform(crop_size=40, scale_min=scale, scale_max=scale, flip=True, jitter=0.0)
        for _ in range(6):
            img, m = tf(image, mask)
            assert img.shape == (3, 40, 40) and m.shape == (40, 40) and m.dtype == torch.int64
            inner = _interior(m)
            decoded = torch.round(img[0] * 255 / 20).long()
            assert torch.equal(decoded[inner], m[inner])
            checked += int(inner.sum())
    assert checked > 5000


def test_flip_moves_image_and_mask_together():
    image, mask = _blocks()
    tf = TrainTransform(crop_size=64, scale_min=1.0, scale_max=1.0, flip=True, jitter=0.0)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        img, m = tf(image, mask)
        flipped = bool(img[1, 24, 0] > img[1, 24, 63])  # ramp reversed
        assert torch.equal(m[:48], torch.from_numpy(mask).long().flip(-1) if flipped
                           else torch.from_numpy(mask).long())
        seen.add(flipped)
    assert seen == {True, False}


def test_padding_is_ignore_and_zero():
    img = torch.ones(3, 10, 12)
    mask = torch.zeros(10, 12, dtype=torch.long)
    out, m = pad_crop(img, mask, 16)
    assert out.shape == (3, 16, 16)
    assert int((m == IGNORE_INDEX).sum()) == 16 * 16 - 10 * 12
    assert torch.all(out[:, m == IGNORE_INDEX] == 0)
    assert torch.all(out[:, m == 0] == 1)


def test_normalisation_and_jitter():
    image, mask = _blocks(48, 48)
    tf = TrainTransform(crop_size=48, scale_min=1, scale_max=1, flip=False, jitter=0.0,
                        mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.1))
    img, m = tf(image, mask)
    raw = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor([0.5, 0.4, 0.3])[:, None, None], torch.tensor([0.25, 0.2, 0.1])[:, None, None]
    assert torch.allclose(img, (raw - mean) / std, atol=1e-5)
    assert torch.equal(m, torch.from_numpy(mask).long())
    jit = TrainTransform(crop_size=48, scale_min=1, scale_max=1, flip=False, jitter=0.4)
    torch.manual_seed(1)
    a, ma = jit(image, mask)
    assert a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, raw)
    assert torch.equal(ma, torch.from_numpy(mask).long())  # photometric only: mask untouched


def test_a_drawn_view_cut_again_from_its_recorded_row_is_the_live_augmentation_bit_for_bit():
    """``TrainTransform.draw`` takes the random parameters in the order the live transform uses
    them (so a seed gives the same view either way), and ``apply`` re-cuts a view from its
    recorded row (a teacher cache stores the rows, not the pixels) without drawing anything."""
    from kaseg.data.transforms import TrainTransform, View

    rng = np.random.default_rng(3)
    for case in range(12):
        h, w = (int(v) for v in rng.integers(20, 80, 2))
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        mask = rng.integers(0, 4, (h, w), dtype=np.uint8)
        tf = TrainTransform((40, 48) if case % 2 else 32, 0.5, 2.0 if case % 3 else 1.0,
                            flip=case % 4 != 1, jitter=0.3 if case % 5 else 0.0)
        tf.set_flip_pairs(4, [(1, 2)])
        torch.manual_seed(case)
        live = tf(image, mask)
        after_live = torch.rand(1)
        torch.manual_seed(case)
        view = tf.draw(h, w)
        after_draw = torch.rand(1)
        row = view.to_row()
        torch.manual_seed(999)  # apply draws nothing: any RNG state gives the same view
        again = tf.apply(image, mask, View.from_row(np.array(row, dtype=np.float64)))
        assert torch.equal(after_live, after_draw)
        assert torch.equal(live[0], again[0]) and torch.equal(live[1], again[1])
        assert (view.jitter is None) == (tf.jitter == 0) and len(row) == View.FIELDS
