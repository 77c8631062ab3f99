from torch import nn

from kaseg.cost import count_flops, count_params, model_cost
from kaseg.models import build_model


def test_conv_flops_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # 2 FLOPs per multiply-add: out elements (8*10*12) x (3*3*3) MACs
    assert count_flops(conv, (10, 12)) == 2 * 8 * 10 * 12 * 27
    assert count_params(conv) == 8 * 27 + 8


def test_student_cheaper_than_teacher_and_flops_scale_with_area():
    s = build_model("tiny-student", 8)
    t = build_model("tiny-teacher", 8)
    cs, ct = model_cost(s, (64, 64)), model_cost(t, (64, 64))
    assert cs["gflops"] < ct["gflops"] and cs["params"] < ct["params"]
    assert model_cost(s, (128, 128))["gflops"] / cs["gflops"] > 3.5
    assert cs["gmacs"] * 2 == cs["gflops"]
