"""The MP / MMP / AP losses against hand-computed values and a naive reference."""

import math

import pytest
import reference_losses as ref
import torch

from maskproxy_losses import (
    AngularPrototypicalLoss,
    MaskedProxyLoss,
    MultinomialMaskedProxyLoss,
    build_loss,
)

E1, E2 = [1.0, 0.0], [0.0, 1.0]


def _set(loss_fn, proxies, w=10.0):
    with torch.no_grad():
        loss_fn.proxies.copy_(torch.tensor(proxies, dtype=torch.float64))
        loss_fn.w.fill_(w)
    return loss_fn.double()


def _batch(seed, sizes, n_classes, dim=6):
    """Random embeddings for speakers with ``sizes`` utterances each, labels interleaved."""
    g = torch.Generator().manual_seed(seed)
    spk = torch.randperm(n_classes, generator=g)[: len(sizes)]
    labels = torch.cat([spk[i].repeat(n) for i, n in enumerate(sizes)])
    labels = labels[torch.randperm(len(labels), generator=g)]
    emb = torch.randn(len(labels), dim, generator=g, dtype=torch.float64)
    return emb, labels


# ---------------------------------------------------------------- hand-computed values
def test_mp_by_hand_no_absent_class():
    # Two speakers, two classes, orthogonal: z = [w + b, b] -> CE = log(1 + e^-w).
    loss_fn = _set(MaskedProxyLoss(2, 2), [E1, E2])
    emb = torch.tensor([E1, E2, E1, E2], dtype=torch.float64)
    loss = loss_fn(emb, torch.tensor([0, 1, 0, 1]))
    expected = 1.5 * math.log(1 + math.exp(-10))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert loss_fn.last_accuracy.item() == 1.0


def test_mp_by_hand_with_absent_proxy():
    # Class 2 is absent with proxy e1 (same as speaker 0's anchor):
    # speaker 0 logits [5, -5, 5] -> log(2 + e^-10); speaker 1 [-5, 5, -5] -> log(1 + 2e^-10).
    loss_fn = _set(MaskedProxyLoss(3, 2), [E1, E2, [3.0, 0.0]])
    emb = torch.tensor([E1, [2.0, 0.0], E2, [0.0, 0.5]], dtype=torch.float64)
    loss = loss_fn(emb, torch.tensor([0, 0, 1, 1]))
    l_mp = (math.log(2 + math.exp(-10)) + math.log(1 + 2 * math.exp(-10))) / 2
    l_reg = math.log(1 + math.exp(-10))
    assert loss.item() == pytest.approx(l_mp + 0.5 * l_reg, rel=1e-12)
    # Speaker 0's query ties with the absent proxy: argmax is not strictly its anchor.
    assert loss_fn.last_accuracy.item() == 0.5


def test_mmp_by_hand():
    loss_fn = _set(MultinomialMaskedProxyLoss(3, 2), [E1, E2, [0.0, -1.0]])
    emb = torch.tensor([E1, E1, E2, E2], dtype=torch.float64)
    loss = loss_fn(emb, torch.tensor([0, 0, 1, 1]))
    # l_pos = log(1 + 2 e^(-10+5)); l_proxy: q0.p2 = 0 -> e^-5, q1.p2 = -1 -> e^-15
    l_pos = ref.log1p_exp_sum([-5.0, -5.0])
    l_proxy = (ref.log1p_exp_sum([-5.0]) + ref.log1p_exp_sum([-15.0])) / 2
    l_pair = ref.log1p_exp_sum([-5.0])
    l_reg = math.log(1 + math.exp(-10))
    assert loss.item() == pytest.approx(l_pos + l_proxy + l_pair + 0.5 * l_reg, rel=1e-12)
    assert loss_fn.last_accuracy.item() == 1.0


def test_mmp_per_speaker_positives_by_hand():
    # Speaker 0: query e1, anchor e1 (cos 1); speaker 1: query e2, anchor (0.6, 0.8) (cos 0.8).
    # Positive exponents b - w cos: 5 - 10 = -5 and 5 - 8 = -3.
    proxies = [E1, E2, [0.0, -1.0]]
    emb = torch.tensor([E1, E1, E2, [0.6, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    released = _set(MultinomialMaskedProxyLoss(3, 2), proxies)
    variant = _set(MultinomialMaskedProxyLoss(3, 2, pos_reduction="per_speaker"), proxies)
    batch_log = math.log(1 + math.exp(-5) + math.exp(-3))
    per_speaker = (math.log(1 + math.exp(-5)) + math.log(1 + math.exp(-3))) / 2
    # Only l_pos differs: the rest is the released form minus its l_pos.
    rest = ref.mmp_loss(emb, labels, torch.tensor(proxies, dtype=torch.float64), 10.0, 5.0)
    rest = float(rest) - batch_log
    assert released(emb, labels).item() == pytest.approx(rest + batch_log, rel=1e-12)
    assert variant(emb, labels).item() == pytest.approx(rest + per_speaker, rel=1e-12)
    # l_pair and l_proxy by hand: s0 sees anchor 1 at w * 0.6 - b = 1, s1 anchor 0 at -5;
    # the absent proxy (0, -1): s0 at -5, s1 at -15; so rest - 0.5 * L_reg is their sum.
    l_pair = (math.log(1 + math.e) + math.log(1 + math.exp(-5))) / 2
    l_proxy = (math.log(1 + math.exp(-5)) + math.log(1 + math.exp(-15))) / 2
    assert rest - l_pair - l_proxy > 0  # what is left is the (positive) regulariser
    with pytest.raises(ValueError, match="pos_reduction"):
        MultinomialMaskedProxyLoss(3, 2, pos_reduction="mean")


def test_mmp_bias_gradient_by_hand_and_fixed_bias():
    # The batch of test_mmp_by_hand. d/db log(1 + sum e^u) = +-(share of the exponentials):
    # l_pos (u = b - w cos) pushes b down, l_pair and l_proxy (u = w cos - b) push it up,
    # L_reg (a cross-entropy) not at all.
    proxies = [E1, E2, [0.0, -1.0]]
    emb = torch.tensor([E1, E1, E2, E2], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    expected = (
        2 * math.exp(-5) / (1 + 2 * math.exp(-5))  # l_pos
        - (sigmoid(-5) + sigmoid(-15)) / 2  # l_proxy
        - sigmoid(-5)  # l_pair: both queries at cos 0 to the other anchor
    )
    learned = _set(MultinomialMaskedProxyLoss(3, 2), proxies)
    learned(emb, labels).backward()
    assert learned.b.grad.item() == pytest.approx(expected, rel=1e-10)

    for learn_scale in (True, False):
        fixed = MultinomialMaskedProxyLoss(3, 2, learn_scale=learn_scale, learn_bias=False)
        fixed = _set(fixed, proxies)
        assert fixed(emb, labels).item() == learned(emb, labels).item()  # same loss
        opt = torch.optim.SGD(fixed.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
        for _ in range(3):
            opt.zero_grad()
            fixed(emb * 0.9 + 0.1, labels).backward()
            opt.step()
        assert fixed.b.grad is None and fixed.b.item() == 5.0  # no update, no weight decay
        assert (fixed.w.item() == 10.0) is not learn_scale
        assert not torch.equal(fixed.proxies, torch.tensor(proxies, dtype=torch.float64))


def test_ap_by_hand():
    loss_fn = AngularPrototypicalLoss().double()
    emb = torch.tensor([E1, [3.0, 0.0], E2, [0.0, 2.0]], dtype=torch.float64)
    loss = loss_fn(emb, torch.tensor([5, 5, 8, 8]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-10)), rel=1e-12)


# ---------------------------------------------------------------- against the reference
@pytest.mark.parametrize("sizes", [(2, 2, 2, 2), (2, 3, 2, 3, 3), (4, 2, 5)])
@pytest.mark.parametrize("name", ["mp", "mmp", "ap"])
def test_matches_naive_reference(name, sizes):
    C = 9
    emb, labels = _batch(len(sizes) + len(name), sizes, C)
    torch.manual_seed(1)
    loss_fn = build_loss(name, C, emb.shape[1]).double()
    got = loss_fn(emb, labels)
    if name == "ap":
        want = ref.ap_loss(emb, labels, loss_fn.w, loss_fn.b)
    else:
        fn = ref.mp_loss if name == "mp" else ref.mmp_loss
        want = fn(emb, labels, loss_fn.proxies, loss_fn.w, loss_fn.b)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    # Gradients agree too (the package uses a hand-written backward for the proxies).
    params = [emb.requires_grad_()] + list(loss_fn.parameters())
    g_got = torch.autograd.grad(loss_fn(emb, labels), params, allow_unused=True)
    want = (
        ref.ap_loss(emb, labels, loss_fn.w, loss_fn.b)
        if name == "ap"
        else fn(emb, labels, loss_fn.proxies, loss_fn.w, loss_fn.b)
    )
    g_want = torch.autograd.grad(want, params, allow_unused=True)
    for a, b in zip(g_got, g_want):
        a = torch.zeros(()) if a is None else a
        b = torch.zeros(()) if b is None else b
        torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["mp", "mmp", "ap"])
def test_gradcheck_float64(name):
    emb, labels = _batch(3, (2, 3, 2), 7, dim=4)
    emb.requires_grad_()
    torch.manual_seed(0)
    loss_fn = build_loss(name, 7, 4).double()
    names = [n for n, _ in loss_fn.named_parameters()]
    inputs = (emb,) + tuple(p.detach().clone().requires_grad_() for p in loss_fn.parameters())

    def g(e, *ps):
        return torch.func.functional_call(loss_fn, dict(zip(names, ps)), (e, labels))

    assert torch.autograd.gradcheck(g, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("sizes", [(2, 2, 2, 2), (2, 3, 2, 3, 3)])
@pytest.mark.parametrize("name", ["mp", "mmp", "ap", "aam"])
def test_host_layout_gives_the_same_loss_and_gradients(name, sizes):
    """A grouping decided on the host (``speaker_layout``, as the training collate does)
    gives the loss and gradients of the grouping worked out on the device, bit for bit
    up to summation order."""
    from maskproxy_losses.losses.grouping import speaker_layout

    emb, labels = _batch(7 + len(sizes), sizes, 9)
    torch.manual_seed(2)
    loss_fn = build_loss(name, 9, emb.shape[1])
    if name == "aam":  # SpeechBrain's classifier computes in float32 (no grouping at all)
        emb = emb.float()
    else:
        loss_fn = loss_fn.double()
    results = []
    for layout in (None, speaker_layout(labels.tolist())):
        e = emb.clone().requires_grad_()
        loss = loss_fn(e, labels, layout=layout)
        params = [e] + [p for p in loss_fn.parameters() if p.requires_grad]
        results.append((loss.detach(), torch.autograd.grad(loss, params), loss_fn.last_accuracy))
    (l0, g0, a0), (l1, g1, a1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=0)
    assert a1.item() == a0.item()
    for x, y in zip(g1, g0):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-13)


def test_speaker_layout_by_hand_and_its_checks():
    from maskproxy_losses.losses.grouping import speaker_layout

    layout = speaker_layout(torch.tensor([5, 2, 5, 2, 2, 8, 8]))
    assert layout.first.tolist() == [0, 1, 5]  # speakers 5, 2, 8 in order of appearance
    assert layout.slot.tolist() == [0, 1, 0, 1, 1, 2, 2]
    assert layout.labels.tolist() == [5, 2, 8] and layout.rest.tolist() == [1.0, 2.0, 1.0]
    assert layout.max_label == 8
    with pytest.raises(ValueError, match=r"label\(s\) \[3\] appear only once"):
        speaker_layout([1, 1, 3])
    with pytest.raises(ValueError, match="out of range"):
        speaker_layout([-1, -1])
    loss_fn = build_loss("mp", 6, 4)
    with pytest.raises(ValueError, match="does not fit the batch"):  # label 8 >= 6 classes
        loss_fn(torch.randn(7, 4), torch.zeros(7, dtype=torch.long), layout=layout)


# ---------------------------------------------------------------- properties
@pytest.mark.parametrize("name", ["mp", "mmp", "ap"])
def test_invariant_to_speaker_order(name):
    emb, labels = _batch(11, (2, 3, 2, 2), 10)
    loss_fn = build_loss(name, 10, emb.shape[1]).double()
    base = loss_fn(emb, labels)
    # Reorder whole speakers, keeping each speaker's utterance order (query first).
    spk_order = list(dict.fromkeys(labels.tolist()))[::-1]
    idx = [i for s in spk_order for i, y in enumerate(labels.tolist()) if y == s]
    assert loss_fn(emb[idx], labels[idx]).item() == pytest.approx(base.item(), rel=1e-12)


@pytest.mark.parametrize("cls", [MaskedProxyLoss, MultinomialMaskedProxyLoss])
def test_present_proxies_get_gradient_only_from_regulariser(cls):
    emb, labels = _batch(5, (2, 2, 3), 8)
    present = sorted(set(labels.tolist()))
    absent = [c for c in range(8) if c not in present]
    loss_fn = cls(8, emb.shape[1], reg_weight=0.0).double()
    loss_fn(emb, labels).backward()
    grad = loss_fn.proxies.grad
    assert torch.all(grad[present] == 0)
    assert torch.all(grad[absent].norm(dim=1) > 0)
    loss_fn.zero_grad()
    loss_fn.reg_weight = 0.5
    loss_fn(emb, labels).backward()
    assert torch.all(loss_fn.proxies.grad[present].norm(dim=1) > 0)
    torch.testing.assert_close(loss_fn.proxies.grad[absent], grad[absent])


@pytest.mark.parametrize("name", ["mp", "mmp"])
def test_stable_at_large_scale(name):
    emb, labels = _batch(2, (2, 2, 3), 6)
    loss_fn = build_loss(name, 6, emb.shape[1], init_w=100.0)
    got = loss_fn(emb.float(), labels)
    fn = ref.mp_loss if name == "mp" else ref.mmp_loss
    # The float64 reference is fine at w = 100 (exp(200) fits); float32 raw exp would not.
    want = fn(emb, labels, loss_fn.proxies.double(), loss_fn.w.double(), loss_fn.b.double())
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(want.item(), rel=1e-4)
    got.backward()
    assert torch.isfinite(loss_fn.proxies.grad).all()


@pytest.mark.parametrize("name", ["mp", "mmp", "ap"])
def test_autocast_bfloat16_close_to_float32(name):
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(10, 16)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3, 3, 3])
    loss_fn = build_loss(name, 12, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = lin(x)
        assert emb.dtype == torch.bfloat16
        low = loss_fn(emb, labels)
    assert low.dtype == torch.float32
    low.backward()
    full = loss_fn(lin(x), labels)
    assert low.item() == pytest.approx(full.item(), rel=0.05)


def test_all_classes_present_is_finite():
    emb, labels = _batch(4, (2, 2, 2), 3)
    for name in ("mp", "mmp"):
        loss_fn = build_loss(name, 3, emb.shape[1]).double()
        e = emb.clone().requires_grad_()
        loss_fn(e, labels).backward()
        assert torch.isfinite(e.grad).all() and torch.isfinite(loss_fn.proxies.grad).all()
        fn = ref.mp_loss if name == "mp" else ref.mmp_loss
        want = fn(emb, labels, loss_fn.proxies, loss_fn.w, loss_fn.b)
        assert loss_fn(emb, labels).item() == pytest.approx(want.item(), rel=1e-10)


def test_accepts_speechbrain_shapes():
    emb, labels = _batch(6, (2, 2), 5)
    loss_fn = build_loss("mp_balance", 5, emb.shape[1]).double()
    a = loss_fn(emb, labels)
    b = loss_fn(emb.unsqueeze(1), labels.unsqueeze(1))
    assert a.item() == b.item()


def test_build_loss_defaults():
    mp, mmp, ap = build_loss("mp", 4, 3), build_loss("mmp_balance", 4, 3), build_loss("ap")
    assert (mp.w.item(), mp.b.item(), mmp.b.item(), ap.b.item()) == (10.0, -5.0, 5.0, -5.0)
    assert mp.proxies.shape == (4, 3) and mp.reg_weight == 0.5
    torch.manual_seed(0)
    big = build_loss("mp", 4000, 256)
    # kaiming_normal_(mode="fan_out") on [C, D]: std = sqrt(2 / C)
    assert big.proxies.std().item() == pytest.approx(math.sqrt(2 / 4000), rel=0.02)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("softmax", 4, 3)
    with pytest.raises(ValueError, match="needs n_classes"):
        build_loss("mp")


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["mp", "mmp", "ap"])
def test_bad_input_errors(name):
    loss_fn = build_loss(name, 5, 4)
    emb = torch.randn(4, 4)
    with pytest.raises(ValueError, match="at least 2 utterances"):
        loss_fn(emb, torch.tensor([0, 0, 1, 2]))
    if name != "ap":
        with pytest.raises(ValueError, match="out of range"):
            loss_fn(emb, torch.tensor([0, 0, 5, 5]))
        with pytest.raises(ValueError, match="out of range"):
            loss_fn(emb, torch.tensor([-1, -1, 2, 2]))
        with pytest.raises(ValueError, match="dimension 3"):
            loss_fn(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="labels must be"):
        loss_fn(emb, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="embeddings must be"):
        loss_fn(torch.randn(4, 2, 4), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="integer"):
        loss_fn(emb, torch.tensor([0.0, 0.0, 1.0, 1.0]))
    bad = emb.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        loss_fn(bad, torch.tensor([0, 0, 1, 1]))


# ---------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["mp", "mmp", "mp_balance", "mmp_balance", "ap"])
@pytest.mark.parametrize("amp", [None, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu_float64(name, amp):
    torch.manual_seed(0)
    emb, labels = _batch(9, (2, 3, 2, 2, 3), 50, dim=32)
    cpu = build_loss(name, 50, 32).double()
    e64 = emb.clone().requires_grad_()
    want = cpu(e64, labels)
    want.backward()
    gpu = build_loss(name, 50, 32).cuda()
    gpu.load_state_dict({k: v.float() for k, v in cpu.state_dict().items()})
    e = emb.float().cuda().requires_grad_()
    with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
        got = gpu(e.to(amp) if amp else e, labels.cuda())
    got.backward()
    tol = 1e-4 if amp is None else 3e-2
    assert got.item() == pytest.approx(want.item(), rel=tol)
    torch.testing.assert_close(e.grad.double().cpu(), e64.grad, rtol=tol * 10, atol=tol)
