import torch
from torch import nn

from kaseg.nets.cost import count_flops, count_params, model_cost
from kaseg.nets.models import build_model


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


class _LinearTask(nn.Module):
    """A task with one linear layer, a BatchNorm and dropout: its loss is the mean output."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn, self.drop = nn.Linear(5, 3), nn.BatchNorm1d(3), nn.Dropout(0.5)

    def forward(self, x):
        return {"loss": self.drop(self.bn(self.fc(x))).mean()}


def test_a_training_steps_flops_by_hand_and_nothing_of_the_task_moves():
    """Linear(5 -> 3) on a batch of 4: forward 2*4*5*3 = 120 FLOPs, backward the weight's
    gradient (another 120; the input needs none); BatchNorm and the mean are not matmuls. The
    task's weights, BatchNorm statistics and the global RNG are as before."""
    import torch

    from kaseg.nets.cost import train_step_flops, train_step_seconds

    torch.manual_seed(0)
    task = _LinearTask()
    before = {k: v.clone() for k, v in task.state_dict().items()}
    rng = torch.get_rng_state()
    x = torch.randn(4, 5)
    rng = torch.get_rng_state()
    assert train_step_flops(task, (x,)) == 240
    assert train_step_seconds(task, (x,), runs=2, warmup=1) > 0
    assert all(torch.equal(before[k], v) for k, v in task.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    task.eval()
    assert train_step_flops(task, (x,)) == 240 and not task.training  # measured in train mode


def test_a_grouped_convolutions_backward_is_counted_once_per_gradient():
    """Each gradient of a convolution takes the forward's multiply-adds: input and weight
    gradients are 2x the forward, for a plain, a depthwise and a grouped transposed conv (torch's
    own formula counts a depthwise conv's input gradient 32x over)."""
    import torch

    from kaseg.nets.cost import flop_counter

    for conv in (nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1, groups=32),
                 nn.ConvTranspose2d(32, 16, 3, padding=1, groups=4)):
        x = torch.randn(2, 32, 16, 16, requires_grad=True)
        counter = flop_counter()
        with counter:
            conv(x).sum().backward()
        counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
        assert counts["aten.convolution_backward"] == 2 * counts["aten.convolution"]
    # the forward itself, by hand: depthwise 3x3 of 32 channels on 2 x 16 x 16
    dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
    counter = flop_counter()
    x = torch.randn(2, 32, 16, 16, requires_grad=True)
    with counter:
        dw(x).sum().backward()
    assert counter.get_total_flops() == 3 * 2 * (2 * 32 * 16 * 16) * 9


def test_timing_a_model_on_another_device_leaves_it_trainable():
    """A model moved to the device inside inference mode gets inference-tensor weights, and the
    next training step fails ("Inplace update to inference tensor", seen on a GPU). ``meta``
    stands in for the GPU: the move happens, unlike a CPU-to-CPU move."""
    from kaseg.engine.bench import forward_time
    from kaseg.nets.cost import measure_latency
    for timer in (lambda m: measure_latency(m, (32, 32), "meta", runs=1, warmup=0),
                  lambda m: forward_time(m, (32, 32), torch.device("meta"), 1, runs=1)):
        model = build_model("tiny-student", 3)
        timer(model)
        tensors = [*model.parameters(), *model.buffers()]
        assert tensors[0].device.type == "meta"
        assert not any(t.is_inference() for t in tensors)
