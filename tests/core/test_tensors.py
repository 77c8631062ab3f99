"""The tensor helpers the losses share: here, a map moved onto another network's grid."""

import torch
import torch.nn.functional as F

from kaseg.core.tensors import onto_grid


def test_a_coarser_map_is_upsampled_by_the_stride_ratio_and_cropped_to_the_finer_grid():
    # a 40-px input: the teacher pads to 40 (divisor 8) and has 10 positions at stride 4; the
    # student pads to 48 (divisor 16) and has 3 at stride 16, which cover 48 px: x4 is 12
    # positions, of which the first 10 lie where the teacher's do
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    got = onto_grid(x, 16, (10, 10), 4)
    full = F.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, full[..., :10, :10])
    # a plain resize to 10 x 10 stretches the 48 px onto 40: another map
    assert not torch.allclose(got, F.interpolate(x, size=(10, 10), mode="bilinear"))


def test_a_map_that_covers_less_is_extended_by_its_edge_and_one_grid_is_the_map_itself():
    x = torch.randn(2, 3, 5, 4)
    assert torch.equal(onto_grid(x, 8, (5, 4), 8), x)
    got = onto_grid(x, 8, (6, 4), 8)
    torch.testing.assert_close(got[..., :5, :], x)  # sampled at its own positions
    torch.testing.assert_close(got[..., 5, :], x[..., 4, :])
    # strides unknown: a plain resize
    torch.testing.assert_close(onto_grid(x, None, (10, 8), 4),
                               F.interpolate(x, size=(10, 8), mode="bilinear"))


def test_each_network_s_own_upsampling_geometry_places_its_positions():
    """SMP's heads upsample with align_corners=True: a 6-position map of stride 16 spans 96
    pixels corner to corner (position i at pixel 19 i), a 24-position map of stride 4 too
    (position j at 95 j / 23): j lies at student position 5 j / 23, which is align_corners'
    own resize. Sampled half-pixel instead (position i at 16 i + 7.5), it is another map: the
    misalignment that cost KD 3 points on the scenes before this was read right."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    got = onto_grid(x, 16, (24, 24), 4, corners=True, to_corners=True)
    torch.testing.assert_close(got, F.interpolate(x, size=(24, 24), mode="bilinear",
                                                  align_corners=True))
    assert not torch.allclose(onto_grid(x, 16, (24, 24), 4), got)
    # a corner-aligned student onto a half-pixel teacher (torchvision's), by hand at one point:
    # teacher position 5 of stride 8 lies at pixel 8 x 5 + 3.5 = 43.5; the student (6 at 16,
    # corners) has position 43.5 / 19 there, between its positions 2 and 3
    got = onto_grid(x, 16, (12, 12), 8, corners=True, to_corners=False)
    u = 43.5 / 19
    want = (3 - u) * x[..., 2, :] + (u - 2) * x[..., 3, :]  # along the rows, column 5 likewise
    want = (3 - u) * want[..., 2] + (u - 2) * want[..., 3]
    torch.testing.assert_close(got[..., 5, 5], want)
