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


def test_a_map_that_covers_less_is_padded_with_its_edge_and_equal_strides_are_a_copy():
    x = torch.randn(2, 3, 5, 4)
    assert torch.equal(onto_grid(x, 8, (5, 4), 8), x)
    got = onto_grid(x, 8, (6, 4), 8)
    assert torch.equal(got[..., :5, :], x) and torch.equal(got[..., 5, :], x[..., 4, :])
    # strides unknown: a plain resize
    torch.testing.assert_close(onto_grid(x, None, (10, 8), 4),
                               F.interpolate(x, size=(10, 8), mode="bilinear"))
