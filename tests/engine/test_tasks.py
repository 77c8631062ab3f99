"""The frozen-network plumbing of the tasks: the forward memo arms in lockstep share, and which
networks may share it."""

import torch
from torch import nn

from kaseg.engine.tasks import ForwardMemo, Frozen, same_network, share_frozen, unshare_frozen


class Counting(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return {"features": {"map": self.conv(x)}}


def test_the_memo_reuses_an_output_only_for_an_equal_input():
    net, memo = Counting(), ForwardMemo()
    frozen = Frozen(net)
    frozen.__dict__["memo"] = memo
    x = torch.randn(2, 3, 8, 8)
    first = frozen(x)
    assert frozen(x.clone())["features"]["map"] is first["features"]["map"]  # equal values
    assert (net.calls, memo.hits) == (1, 1)
    x[0, 0, 0, 0] += 1.0  # the caller writes into its batch: the memo kept its own copy
    again = frozen(x)
    assert net.calls == 2
    assert torch.equal(again["features"]["map"], net.conv(x))
    frozen(x.contiguous(memory_format=torch.channels_last))  # another layout: computed again
    frozen(x[:1])  # another shape
    assert (net.calls, memo.calls, memo.hits) == (4, 5, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # another precision
        frozen(x[:1])
    assert net.calls == 5


def test_only_equal_networks_are_shared():
    class Task(nn.Module):
        def __init__(self, teacher, encoder):
            super().__init__()
            self.teacher, self.encoder = Frozen(teacher), Frozen(encoder)

    a, b, other = Counting(0), Counting(0), Counting(1)
    assert same_network(a, b) and not same_network(a, other)
    tasks = [Task(a, nn.Identity()), Task(b, nn.Identity()), Task(Counting(0), other)]
    # teacher a (= b = the third task's teacher) and Identity; `other` stays its own
    assert share_frozen(tasks) == 3
    assert tasks[1].teacher.inner is a and tasks[2].teacher.inner is a
    assert tasks[2].encoder.inner is other
    assert tasks[0].teacher.memo is tasks[2].teacher.memo is not None
    x = torch.randn(1, 3, 8, 8)
    for t in tasks:
        t.teacher(x)
    assert a.calls == 1
    unshare_frozen(tasks)
    tasks[0].teacher(x)
    assert a.calls == 2 and tasks[0].teacher.memo is None


def test_the_encoder_memo_serves_both_halves_of_a_step_with_unlabelled_images():
    """A step with unlabelled images calls the encoder on the labelled and then the unlabelled
    half of the teacher's map; the second arm of a lockstep pair gets both from the memo (one
    entry would hold only the last half, and every call would miss), with the outputs it would
    compute itself."""
    from kaseg.losses.method import FeatureAutoencoder, ae_strides
    from kaseg.nets.models import build_model
    from kaseg.engine.tasks import DistillTask

    torch.manual_seed(0)
    teacher = build_model("tiny-teacher", 3)
    ti = teacher.feature_info["pre_logits"]
    si = build_model("tiny-student", 3).feature_info["pre_logits"]
    ae = FeatureAutoencoder(ti.channels, 8, ae_strides(si.stride // ti.stride))

    def arm():
        torch.manual_seed(1)
        return DistillTask(student=build_model("tiny-student", 3), teacher=teacher,
                           encoder=ae.encoder, latent_channels=8)

    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    u, valid = torch.randn(3, 3, 32, 32), torch.zeros(3, 32, 32, dtype=torch.long)
    alone = arm()(x, y, u, valid)
    tasks = [arm(), arm()]
    assert share_frozen(tasks) == 2
    outs = [t(x, y, u, valid) for t in tasks]
    enc, tea = tasks[0].encoder.memo, tasks[0].teacher.memo
    assert (enc.calls, enc.hits) == (4, 2)  # labelled + unlabelled half, each computed once
    assert (tea.calls, tea.hits) == (2, 1)
    for out in outs:
        for k in ("adapt", "adapt_unlabeled", "affinity_unlabeled", "loss"):
            assert torch.equal(out[k], alone[k])
