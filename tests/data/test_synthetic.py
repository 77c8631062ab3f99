import numpy as np

from kaseg.data.synthetic import CLASS_NAMES, CONTEXT_CLASSES, SyntheticScenes, make_scene


def test_deterministic_and_split_fixed():
    a1, m1 = make_scene(64, 0, "train", 3)
    a2, m2 = make_scene(64, 0, "train", 3)
    assert np.array_equal(a1, a2) and np.array_equal(m1, m2)
    b, _ = make_scene(64, 0, "val", 3)
    c, _ = make_scene(64, 1, "train", 3)
    assert not np.array_equal(a1, b) and not np.array_equal(a1, c)
    assert a1.shape == (64, 64, 3) and a1.dtype == np.uint8 and m1.shape == (64, 64)


def test_any_size_and_all_classes_occur():
    ds = SyntheticScenes("train", count=40, size=96)
    assert len(ds) == 40 and ds.num_classes == len(CLASS_NAMES) == 8
    seen = np.zeros(8, int)
    for i in range(len(ds)):
        img, mask = ds[i]
        assert img.shape == (96, 96, 3)
        seen += np.bincount(mask.ravel(), minlength=8)
    assert (seen > 0).all()


def test_context_classes_look_alike_and_follow_the_beacon():
    """Twins have the same appearance; only the far-away beacon's colour tells their class."""
    looks = {}
    for i in range(30):
        img, mask = make_scene(64, 0, "train", i)
        twins = [c for c in CONTEXT_CLASSES if (mask == c).any()]
        assert len(twins) == 1  # one kind per image
        beacon = img[mask == 7].astype(float).mean(0)
        expected = CONTEXT_CLASSES[0] if beacon[0] > beacon[2] else CONTEXT_CLASSES[1]
        assert twins[0] == expected
        looks.setdefault(twins[0], []).append(img[mask == twins[0]].astype(float).mean(0))
        # the beacon and the twins are far apart: no twin pixel within 16 px of the beacon band
        by, bx = np.argwhere(mask == 7).mean(0)
        ty, tx = np.argwhere(mask == twins[0]).T
        assert np.min(np.hypot(ty - by, tx - bx)) > 16
    red, blue = (np.mean(looks[c], 0) for c in CONTEXT_CLASSES)
    assert np.abs(red - blue).max() < 10  # same mean colour (within noise)
