"""clipood.efficiency.measure: the FLOP counter against hand counts on a tiny transformer (CPU attention included), the
forward/backward split, fake-tensor counting, parameter counts and the peak-memory tracker. No timing asserts."""
import torch
import torch.nn.functional as F
from torch import nn

from clipood.efficiency import measure as bench

B, L, W, H, FF = 2, 7, 16, 2, 64          # batch, tokens, width, heads, MLP width
T = B * L                                 # tokens in the batch


class Block(nn.Module):
    """Pre-norm-free transformer block: MHA (packed in-projection) + MLP."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(W, H, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(W, FF), nn.Linear(FF, W)

    def forward(self, x):
        a = self.attn(x, x, x, need_weights=False)[0]
        return self.fc2(F.relu(self.fc1(x + a)))


def hand_forward() -> int:
    lin = 2 * T * W * 3 * W + 2 * T * W * W + 2 * T * W * FF + 2 * T * FF * W
    attn = 2 * (2 * B * H * L * L * (W // H))    # Q·Kᵀ and softmax·V
    return lin + attn


def hand_backward() -> int:
    # input x needs no gradient: the in-projection computes only its weight gradient (1×), every later linear
    # computes weight and input gradients (2×); attention backward = 2.5× its forward (torch's formula)
    in_proj = 2 * T * W * 3 * W
    later = 2 * (2 * T * W * W + 2 * T * W * FF + 2 * T * FF * W)
    attn = 5 * (2 * B * H * L * L * (W // H))
    return in_proj + later + attn


def _step(m, x):
    return lambda: m(x).sum(), lambda out: torch.autograd.grad(out, [p for p in m.parameters()])


def test_hand_count_tiny_transformer_forward_and_backward():
    torch.manual_seed(0)
    m, x = Block(), torch.randn(B, L, W)
    fwd, bwd = _step(m, x)
    c = bench.count_flops(fwd, bwd, modules=[m])
    assert c.forward == hand_forward()
    assert c.backward == hand_backward()
    assert c.total == hand_forward() + hand_backward()


def test_eval_no_grad_fast_path_is_counted():
    # in eval + no_grad nn.MultiheadAttention takes a fused path that a plain FlopCounterMode does not see
    from torch.utils.flop_counter import FlopCounterMode

    m, x = Block().eval(), torch.randn(B, L, W)
    with torch.no_grad():
        with FlopCounterMode(display=False) as plain:
            m(x)
        c = bench.count_flops(lambda: m(x), modules=[m])
    assert plain.get_total_flops() < hand_forward()            # the problem this module fixes
    assert c.forward == hand_forward() and c.backward == 0
    assert not m.attn.training                                 # mode restored


def test_cpu_flash_attention_is_counted():
    # F.scaled_dot_product_attention on CPU dispatches to a kernel torch has no FLOP formula for
    q, k, v = (torch.randn(B, H, L, W // H, requires_grad=True) for _ in range(3))
    c = bench.count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum(),
                          lambda out: torch.autograd.grad(out, [q, k, v]))
    assert c.forward == 4 * B * H * L * L * (W // H)
    assert c.backward == 10 * B * H * L * L * (W // H)


def test_fake_tensors_count_the_same_and_compute_nothing():
    torch.manual_seed(0)
    m, x = Block(), torch.randn(B, L, W)
    fwd, bwd = _step(m, x)
    c = bench.count_flops(fwd, bwd, modules=[m], fake=True)
    assert (c.forward, c.backward) == (hand_forward(), hand_backward())
    assert all(p.grad is None for p in m.parameters())


def test_count_parameters_counts_shared_once_and_skips_frozen():
    lin = nn.Linear(3, 4)                                      # 12 + 4
    seq = nn.Sequential(lin, nn.ReLU(), lin, nn.Linear(4, 2))  # shared lin once, + 8 + 2
    seq[3].bias.requires_grad_(False)
    assert bench.count_parameters(seq) == 16 + 8
    assert bench.count_parameters(seq, trainable_only=False) == 16 + 10


def test_peak_memory_tracks_live_tensors():
    n = 256 * 256 * 4                                          # bytes of one 256×256 float32 tensor

    def fn():
        a = torch.ones(256, 256)
        b = a * 2
        del a
        c = b + 1                                              # a is gone: at most two tensors alive
        return c.sum()

    peak = bench.peak_memory(fn)
    assert 2 * n <= peak < 3 * n


def test_time_call_and_metadata():
    calls = []
    t = bench.time_call(lambda: calls.append(1), rounds=3, warmup=2)
    assert len(calls) == 5 and len(t.times) == 3 and t.minimum <= t.median
    info = bench.machine_info()
    assert info["torch"] == torch.__version__ and info["cpu_count"] >= 1
    assert set(bench.git_info()) == {"commit", "branch", "dirty"}
