"""The distillation losses against independent computations written from their papers' formulas.

Each reference below is computed element by element (Python loops over samples, pairs and
triplets) from the formula in the paper, on fixed tensors; none calls kdcore's helpers. Gradients
are checked in float64 with torch.autograd.gradcheck.
"""

import math

import pytest
import torch
from torch.nn import functional as F

from kdcore.errors import KdflowError
from kdcore.losses import KDInputs, build_objective, create_loss

torch.set_default_dtype(torch.float32)


def fixed(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def softmax_list(values):
    m = max(values)
    e = [math.exp(v - m) for v in values]
    return [v / sum(e) for v in e]


def kl_list(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


def feats(s, t, s_path="s", t_path="t"):
    return dict(student_features={s_path: s}, teacher_features={t_path: t})


def inputs(logits, teacher=None, targets=None, **kw):
    if targets is None:
        targets = torch.zeros(len(logits), dtype=torch.long)
    return KDInputs(student_logits=logits, teacher_logits=teacher, targets=targets, **kw)


# ---------------------------------------------------------------- DKD (Zhao et al. 2022)


def hand_dkd(s, t, y, alpha, beta, temp):
    tckd = nckd = 0.0
    for s_row, t_row, gt in zip(s.tolist(), t.tolist(), y.tolist()):
        p_s = softmax_list([v / temp for v in s_row])
        p_t = softmax_list([v / temp for v in t_row])
        b_s, b_t = [p_s[gt], 1 - p_s[gt]], [p_t[gt], 1 - p_t[gt]]
        tckd += kl_list(b_t, b_s)
        others = [k for k in range(len(s_row)) if k != gt]
        hat_s = softmax_list([s_row[k] / temp for k in others])
        hat_t = softmax_list([t_row[k] / temp for k in others])
        nckd += kl_list(hat_t, hat_s)
    n = len(y)
    return alpha * temp**2 * tckd / n, beta * temp**2 * nckd / n


@pytest.mark.parametrize("alpha,beta,temp", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_matches_paper(alpha, beta, temp):
    s, t = fixed(5, 6, seed=1) * 3, fixed(5, 6, seed=2) * 3
    y = torch.tensor([0, 3, 5, 1, 3])
    out = create_loss("dkd", {"alpha": alpha, "beta": beta, "temperature": temp})(inputs(s, t, y))
    want_t, want_n = hand_dkd(s, t, y, alpha, beta, temp)
    assert set(out) == {"dkd_tckd", "dkd_nckd"}
    assert out["dkd_tckd"].item() == pytest.approx(want_t, rel=1e-4)
    assert out["dkd_nckd"].item() == pytest.approx(want_n, rel=1e-4)


def test_dkd_decomposes_kd():
    """The paper's identity KD = TCKD + (1 - p_t_gt) NCKD, per sample."""
    s, t, y = fixed(1, 5, seed=3), fixed(1, 5, seed=4), torch.tensor([2])
    out = create_loss("dkd", {"alpha": 1.0, "beta": 1.0, "temperature": 2.0})(inputs(s, t, y))
    kd = create_loss("kd", {"temperature": 2.0})(inputs(s, t, y))["kd"].item()
    p_t_rest = 1 - softmax_list([v / 2.0 for v in t[0].tolist()])[2]
    assert kd == pytest.approx(out["dkd_tckd"].item() + p_t_rest * out["dkd_nckd"].item(), rel=1e-4)


def test_dkd_warmup_ramps_in_training_only():
    s, t, y = fixed(4, 5, seed=5), fixed(4, 5, seed=6), torch.tensor([0, 1, 2, 3])
    loss = create_loss("dkd", {"warmup": 4})
    full = hand_dkd(s, t, y, 1.0, 8.0, 4.0)[1]
    values = [loss(inputs(s, t, y))["dkd_nckd"].item() for _ in range(6)]
    assert values == pytest.approx([full * k / 4 for k in (1, 2, 3, 4, 4, 4)], rel=1e-4)
    loss.eval()
    assert loss(inputs(s, t, y))["dkd_nckd"].item() == pytest.approx(full, rel=1e-4)
    assert int(loss.state_dict()["steps"]) == 6  # the ramp survives a checkpoint


# ---------------------------------------------------------------- DIST (Huang et al. 2022)


def pearson_list(u, v):
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    cov = sum((a - mu) * (b - mv) for a, b in zip(u, v))
    return cov / math.sqrt(sum((a - mu) ** 2 for a in u) * sum((b - mv) ** 2 for b in v))


def hand_dist(s, t, beta, gamma, temp):
    ps = [softmax_list([v / temp for v in row]) for row in s.tolist()]
    pt = [softmax_list([v / temp for v in row]) for row in t.tolist()]
    n, c = len(ps), len(ps[0])
    inter = sum(1 - pearson_list(ps[i], pt[i]) for i in range(n)) / n
    columns = [([ps[i][j] for i in range(n)], [pt[i][j] for i in range(n)]) for j in range(c)]
    intra = sum(1 - pearson_list(a, b) for a, b in columns) / c
    return beta * inter * temp**2, gamma * intra * temp**2


@pytest.mark.parametrize("beta,gamma,temp", [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)])
def test_dist_matches_paper(beta, gamma, temp):
    s, t = fixed(6, 5, seed=1), 3 * fixed(6, 5, seed=2)
    out = create_loss("dist", {"beta": beta, "gamma": gamma, "temperature": temp})(inputs(s, t))
    want_inter, want_intra = hand_dist(s, t, beta, gamma, temp)
    assert set(out) == {"dist_inter", "dist_intra"}
    assert out["dist_inter"].item() == pytest.approx(want_inter, rel=1e-4)
    assert out["dist_intra"].item() == pytest.approx(want_intra, rel=1e-4)


def test_dist_asks_for_correlation_not_equality():
    """A student whose probabilities are the teacher's shifted and scaled along each row scores 0 on
    the inter-class term, where KD, which asks for the same probabilities, does not."""
    t = fixed(4, 5, seed=3)
    p_t = F.softmax(t, dim=-1)
    p_s = 0.5 * p_t + 0.1  # rows still sum to 1 (0.5 + 5 * 0.1), a positive affine image of p_t
    s = p_s.log()  # logits whose softmax at T 1 is p_s
    out = create_loss("dist", {"temperature": 1.0})(inputs(s, t))
    assert out["dist_inter"].item() == pytest.approx(0.0, abs=1e-6)
    assert create_loss("kd", {"temperature": 1.0})(inputs(s, t))["kd"].item() > 0.01
    one = create_loss("dist", {})(inputs(s[:1], t[:1]))  # a single sample: no columns to correlate
    assert one["dist_intra"].item() == 0.0


def test_dist_parameter_errors():
    with pytest.raises(KdflowError, match="'beta'"):
        create_loss("dist", {"beta": -1.0})
    with pytest.raises(KdflowError, match="'temperature'"):
        create_loss("dist", {"temperature": 0.0})
    with pytest.raises(KdflowError, match="at least 2 classes"):
        create_loss("dist", {})(inputs(fixed(3, 1), fixed(3, 1)))


# ---------------------------------------------------------------- logit regression (Ba & Caruana 2014)


def test_logit_mse_matches_formula_and_is_kd_at_high_temperature():
    s, t = fixed(5, 4, seed=4), 3 * fixed(5, 4, seed=5)
    want = sum((a - b) ** 2 for row_s, row_t in zip(s.tolist(), t.tolist()) for a, b in zip(row_s, row_t)) / 20
    assert create_loss("logit_mse", {})(inputs(s, t))["logit_mse"].item() == pytest.approx(want, rel=1e-5)
    centered = create_loss("logit_mse", {"center": True})
    # softmax ignores a per-row offset: the centered form does too, the plain one does not
    shifted = s + torch.arange(5.0)[:, None]
    assert centered(inputs(shifted, t))["logit_mse"].item() == pytest.approx(
        centered(inputs(s, t))["logit_mse"].item(), rel=1e-5
    )
    assert create_loss("logit_mse", {})(inputs(shifted, t))["logit_mse"].item() > want + 1.0
    # T^2 KL(teacher_T || student_T) tends to half the centered logit MSE as T grows
    kd = create_loss("kd", {"temperature": 1000.0})(inputs(s.double(), t.double()))["kd"].item()
    assert kd == pytest.approx(centered(inputs(s.double(), t.double()))["logit_mse"].item() / 2, rel=1e-2)
    assert kd != pytest.approx(want / 2, rel=1e-2)


def test_logit_mse_errors():
    with pytest.raises(KdflowError, match="'center'"):
        create_loss("logit_mse", {"center": "yes"})
    with pytest.raises(KdflowError, match="teacher logits"):
        create_loss("logit_mse", {})(inputs(fixed(3, 4)))


# ---------------------------------------------------------------- TTM / WTTM (Zheng & Yang 2024)


def hand_ttm(s, t, temp, weighted):
    total = 0.0
    for s_row, t_row in zip(s.tolist(), t.tolist()):
        q_t = softmax_list([v / temp for v in t_row])  # the teacher softened, the student not
        kl = kl_list(q_t, softmax_list(s_row))
        if weighted:  # the power sum of the teacher's plain probabilities
            kl *= sum(p ** (1 / temp) for p in softmax_list(t_row))
        total += kl
    return total / len(s)


@pytest.mark.parametrize("weighted", [False, True])
def test_ttm_matches_formula(weighted):
    s, t = fixed(6, 5, seed=40), 4 * fixed(6, 5, seed=41)
    got = create_loss("ttm", {"temperature": 3.0, "weighted": weighted})(inputs(s, t))["ttm"].item()
    assert got == pytest.approx(hand_ttm(s, t, 3.0, weighted), rel=1e-5)


def test_ttm_at_t1_is_kd_and_differs_from_kd_above():
    s, t = fixed(4, 6, seed=42), 2 * fixed(4, 6, seed=43)
    ttm = create_loss("ttm", {"temperature": 1.0})(inputs(s, t))["ttm"].item()
    assert ttm == pytest.approx(create_loss("kd", {"temperature": 1.0})(inputs(s, t))["kd"].item(), rel=1e-5)
    # at T 2 the student's side is not softened: not KD's T^2 KL of both softened
    ttm2 = create_loss("ttm", {"temperature": 2.0})(inputs(s, t))["ttm"].item()
    assert ttm2 != pytest.approx(create_loss("kd", {"temperature": 2.0})(inputs(s, t))["kd"].item(), rel=1e-2)


def test_wttm_weight_spans_one_to_the_uniform_power_sum():
    s = fixed(2, 4, seed=44)
    sure, flat = torch.tensor([[60.0, 0.0, 0.0, 0.0]]), torch.zeros(1, 4)
    for teacher, weight in ((sure, 1.0), (flat, 4 ** (1 - 1 / 2))):
        plain = create_loss("ttm", {"temperature": 2.0})(inputs(s[:1], teacher))["ttm"].item()
        w = create_loss("ttm", {"temperature": 2.0, "weighted": True})(inputs(s[:1], teacher))["ttm"].item()
        assert w == pytest.approx(weight * plain, rel=1e-5)


def test_ttm_errors():
    with pytest.raises(KdflowError, match="'weighted'"):
        create_loss("ttm", {"weighted": 1})
    with pytest.raises(KdflowError, match="'temperature'"):
        create_loss("ttm", {"temperature": 0})
    with pytest.raises(KdflowError, match="teacher logits"):
        create_loss("ttm", {})(inputs(fixed(3, 4)))


# ---------------------------------------------------------------- AT (Zagoruyko & Komodakis 2017)


def hand_attention(fmap):  # (C, H, W) -> flat list sum_c a^2, L2-normalised
    c, h, w = fmap.shape
    q = [sum(fmap[k, i, j].item() ** 2 for k in range(c)) for i in range(h) for j in range(w)]
    norm = math.sqrt(sum(v * v for v in q))
    return [v / norm for v in q]


def test_at_matches_paper_same_size():
    s, t = fixed(3, 4, 3, 3, seed=7), fixed(3, 6, 3, 3, seed=8)  # channels differ
    loss = create_loss("at", {"pairs": [{"student": "s", "teacher": "t"}]})
    loss.build({"s": (4, 3, 3)}, {"t": (6, 3, 3)})
    got = loss(inputs(torch.zeros(3, 3), **feats(s, t)))["at"].item()
    dists = [math.dist(hand_attention(s[n]), hand_attention(t[n])) for n in range(3)]
    assert got == pytest.approx(0.5 * sum(dists) / 3, rel=1e-5)


def test_at_resizes_student_map_to_teacher_size():
    s, t = fixed(2, 3, 4, 4, seed=9), fixed(2, 5, 2, 2, seed=10)
    loss = create_loss("at", {"pairs": [{"student": "s", "teacher": "t"}]})
    loss.build({"s": (3, 4, 4)}, {"t": (5, 2, 2)})
    got = loss(inputs(torch.zeros(2, 3), **feats(s, t)))["at"].item()
    want = 0.0
    for n in range(2):
        energy = (s[n] ** 2).sum(0)  # 4x4, shrunk to 2x2 by averaging 2x2 blocks
        pooled = [energy[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean().item() for i in range(2) for j in range(2)]
        norm = math.sqrt(sum(v * v for v in pooled))
        want += math.dist([v / norm for v in pooled], hand_attention(t[n]))
    assert got == pytest.approx(0.5 * want / 2, rel=1e-5)
    # growing: bilinear up-sampling of the student's map (torch's interpolate as the reference resize)
    small, big = fixed(2, 3, 2, 2, seed=11), fixed(2, 3, 4, 4, seed=12)
    loss.build({"s": (3, 2, 2)}, {"t": (3, 4, 4)})
    got = loss(inputs(torch.zeros(2, 3), **feats(small, big)))["at"].item()
    up = F.interpolate((small**2).sum(1, keepdim=True), size=(4, 4), mode="bilinear", align_corners=False)
    want = sum(math.dist(F.normalize(up[n].flatten(), dim=0).tolist(), hand_attention(big[n])) for n in range(2))
    assert got == pytest.approx(0.5 * want / 2, rel=1e-5)


def test_at_rejects_vectors_early_naming_the_pair():
    loss = create_loss("at", {"pairs": [{"student": "fc_in", "teacher": "block3"}]})
    with pytest.raises(KdflowError) as err:
        loss.build({"fc_in": (16,)}, {"block3": (32, 4, 4)})
    msg = str(err.value)
    assert "'fc_in'" in msg and "'block3'" in msg and "(16,)" in msg and "(32, 4, 4)" in msg


# ---------------------------------------------------------------- PKT (Passalis & Tefas 2018)


def hand_pkt(s, t, eps=1e-7):
    def cond(x):
        x = [row.tolist() for row in x.flatten(1)]
        n = len(x)

        def kern(a, b):
            cos = sum(u * v for u, v in zip(a, b)) / math.sqrt(sum(u * u for u in a) * sum(v * v for v in b))
            return (cos + 1) / 2

        probs = []
        for i in range(n):
            row = [kern(x[i], x[j]) if j != i else 0.0 for j in range(n)]
            total = sum(row)
            probs.append([v / total for v in row])
        return probs

    p_t, p_s = cond(t), cond(s)
    n = len(p_t)
    return sum(p_t[i][j] * math.log(p_t[i][j] / p_s[i][j]) for i in range(n) for j in range(n) if j != i) / n


def test_pkt_matches_paper():
    s, t = fixed(5, 3, 2, 2, seed=13), fixed(5, 7, seed=14)  # a map against a vector of another size
    loss = create_loss("pkt", {"pairs": [{"student": "s", "teacher": "t"}]})
    got = loss(inputs(torch.zeros(5, 3), **feats(s, t)))["pkt"].item()
    assert got == pytest.approx(hand_pkt(s, t), rel=1e-4)
    assert loss(inputs(torch.zeros(5, 3), **feats(t, t)))["pkt"].item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- RKD (Park et al. 2019)


def huber(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def hand_rkd(s, t, anchors=None):
    s, t = [r.tolist() for r in s.flatten(1)], [r.tolist() for r in t.flatten(1)]
    n = len(s)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]

    def psi_d(x):
        d = {(i, j): math.dist(x[i], x[j]) for i, j in pairs}
        mu = sum(d.values()) / len(d)
        return {k: v / mu for k, v in d.items()}

    def psi_a(x):
        out = {}
        for i in range(n):
            for j in range(anchors or n):
                for k in range(n):
                    if len({i, j, k}) < 3:
                        continue
                    e_ij = [a - b for a, b in zip(x[i], x[j])]
                    e_kj = [a - b for a, b in zip(x[k], x[j])]
                    out[(i, j, k)] = sum(a * b for a, b in zip(e_ij, e_kj)) / (math.hypot(*e_ij) * math.hypot(*e_kj))
        return out

    ds, dt = psi_d(s), psi_d(t)
    as_, at_ = psi_a(s), psi_a(t)
    dist = sum(huber(ds[k] - dt[k]) for k in ds) / len(ds)
    angle = sum(huber(as_[k] - at_[k]) for k in as_) / len(as_)
    return dist, angle


def test_rkd_matches_paper():
    s, t = fixed(5, 4, seed=15), fixed(5, 9, seed=16) * 3
    loss = create_loss(
        "rkd", {"pairs": [{"student": "s", "teacher": "t"}], "distance_weight": 25.0, "angle_weight": 50.0}
    )
    out = loss(inputs(torch.zeros(5, 3), **feats(s, t)))
    dist, angle = hand_rkd(s, t)
    assert out["rkd_distance"].item() == pytest.approx(25.0 * dist, rel=1e-4)
    assert out["rkd_angle"].item() == pytest.approx(50.0 * angle, rel=1e-4)
    # the angle's vertex restricted to the batch's first samples
    anchored = create_loss("rkd", {"pairs": [{"student": "s", "teacher": "t"}], "angle_anchors": 2})
    want = hand_rkd(s, t, anchors=2)[1]
    assert anchored(inputs(torch.zeros(5, 3), **feats(s, t)))["rkd_angle"].item() == pytest.approx(50 * want, rel=1e-4)
    # both potentials are invariant to scaling the embedding: a scaled copy costs nothing
    same = loss(inputs(torch.zeros(5, 3), **feats(2.5 * t, t)))
    assert same["rkd_distance"].item() == pytest.approx(0.0, abs=1e-5)
    assert same["rkd_angle"].item() == pytest.approx(0.0, abs=1e-5)


# ---------------------------------------------------------------- SP (Tung & Mori 2019)


def test_sp_matches_paper():
    s, t = fixed(4, 2, 3, 3, seed=17), fixed(4, 6, 2, 2, seed=18)
    b = 4

    def g_tilde(x):
        q = [r.tolist() for r in x.flatten(1)]
        g = [[sum(u * v for u, v in zip(q[i], q[j])) for j in range(b)] for i in range(b)]
        return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in g]

    gs, gt = g_tilde(s), g_tilde(t)
    want = sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2
    loss = create_loss("sp", {"pairs": [{"student": "s", "teacher": "t"}]})
    assert loss(inputs(torch.zeros(4, 3), **feats(s, t)))["sp"].item() == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------- CRD (Tian et al. 2020)


def hand_nce(anchor, positives, negatives, tau, log_z_over_m, k):
    """Batch mean of -log h(pos) - sum_k log(1 - h(neg_k)) with h = P / (P + K/M), P = exp(v / tau) / Z.
    Z / M is given (as its log); multiplying P and K/M by M gives h = PM / (PM + K)."""
    total = 0.0
    z_over_m = math.exp(log_z_over_m)
    for a, p, negs in zip(anchor, positives, negatives):
        # P * M = exp(v / tau) / (Z / M); h = P / (P + K / M) = P*M / (P*M + K)
        pm = math.exp(sum(x * y for x, y in zip(a, p)) / tau) / z_over_m
        total -= math.log(pm / (pm + k))
        for neg in negs:
            nm = math.exp(sum(x * y for x, y in zip(a, neg)) / tau) / z_over_m
            total -= math.log(k / (nm + k))
    return total / len(anchor)


def unit(x):
    return [(r / r.norm()).tolist() for r in x]


def crd_embed(loss, f_s, f_t):
    e_s = unit(f_s.flatten(1) @ loss.embed_s.weight.t() + loss.embed_s.bias)
    e_t = unit(f_t.flatten(1) @ loss.embed_t.weight.t() + loss.embed_t.bias)
    return e_s, e_t


def log_mean_exp(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values) / len(values))


def test_crd_queue_matches_paper_nce():
    torch.manual_seed(0)
    k, tau = 6, 0.5
    loss = create_loss(
        "crd",
        {"student": "s", "teacher": "t", "feat_dim": 4, "num_negatives": k, "temperature": tau, "memory": "queue"},
    )
    loss.build({"s": (3, 2, 2)}, {"t": (5,)})
    f_s, f_t = fixed(3, 3, 2, 2, seed=19), fixed(3, 5, seed=20)
    mem_s, mem_t = unit(loss.memory_s.clone()), unit(loss.memory_t.clone())
    e_s, e_t = crd_embed(loss, f_s, f_t)
    with torch.no_grad():
        got = loss(inputs(torch.zeros(3, 3), **feats(f_s, f_t)))["crd"].item()
    dot = lambda a, b: sum(x * y for x, y in zip(a, b)) / tau  # noqa: E731
    # Z = M * mean(exp(logits of the first batch)), one per side (student anchors, teacher anchors)
    lz_s = log_mean_exp([dot(a, p) for a, p in zip(e_s, e_t)] + [dot(a, n) for a in e_s for n in mem_t])
    lz_t = log_mean_exp([dot(a, p) for a, p in zip(e_t, e_s)] + [dot(a, n) for a in e_t for n in mem_s])
    want = hand_nce(e_s, e_t, [mem_t] * 3, tau, lz_s, k) + hand_nce(e_t, e_s, [mem_s] * 3, tau, lz_t, k)
    assert got == pytest.approx(want, rel=1e-4)
    assert loss.log_z.tolist() == pytest.approx([lz_s, lz_t], rel=1e-5)  # Z is fixed after the first batch
    # the batch's embeddings were enqueued (FIFO) and the pointer advanced
    assert torch.allclose(loss.memory_s[:3], torch.tensor(e_s), atol=1e-5)
    assert torch.allclose(loss.memory_t[:3], torch.tensor(e_t), atol=1e-5)
    assert int(loss.queue_ptr) == 3


def test_crd_bank_uses_indexed_positives_and_momentum_update():
    torch.manual_seed(0)
    k, tau, m = 4, 1.0, 0.5
    loss = create_loss(
        "crd",
        {
            "student": "s",
            "teacher": "t",
            "feat_dim": 3,
            "num_negatives": k,
            "temperature": tau,
            "momentum": m,
            "memory": "bank",
        },
    )
    objective = build_objective(
        {
            "crd": {
                "weight": 1.0,
                "student": "s",
                "teacher": "t",
                "feat_dim": 3,
                "num_negatives": k,
                "temperature": tau,
                "momentum": m,
            }
        }
    )
    objective.build({"s": (4,)}, {"t": (4,)}, num_samples=10)
    assert objective.losses["crd"].memory_s.shape == (10, 3)  # one row per training sample
    loss.bind_dataset(10)
    loss.build({"s": (4,)}, {"t": (4,)})
    negatives = torch.tensor([7, 1, 8, 2])
    loss._negatives = lambda device: negatives  # fix the uniform draw
    idx = torch.tensor([3, 5])
    f_s, f_t = fixed(2, 4, seed=21), fixed(2, 4, seed=22)
    bank_s, bank_t = loss.memory_s.clone(), loss.memory_t.clone()
    e_s, e_t = crd_embed(loss, f_s, f_t)
    with torch.no_grad():
        got = loss(inputs(torch.zeros(2, 3), **feats(f_s, f_t), indices=idx))["crd"].item()
    bs, bt = unit(bank_s), unit(bank_t)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b)) / tau  # noqa: E731
    pos_s, pos_t = [bt[i] for i in idx.tolist()], [bs[i] for i in idx.tolist()]
    neg_s, neg_t = [bt[i] for i in negatives.tolist()], [bs[i] for i in negatives.tolist()]
    lz_s = log_mean_exp([dot(a, p) for a, p in zip(e_s, pos_s)] + [dot(a, n) for a in e_s for n in neg_s])
    lz_t = log_mean_exp([dot(a, p) for a, p in zip(e_t, pos_t)] + [dot(a, n) for a in e_t for n in neg_t])
    want = hand_nce(e_s, pos_s, [neg_s] * 2, tau, lz_s, k) + hand_nce(e_t, pos_t, [neg_t] * 2, tau, lz_t, k)
    assert got == pytest.approx(want, rel=1e-4)
    for i, e in zip(idx.tolist(), e_s):  # bank row <- normalise(m * old + (1 - m) * new)
        mixed = [m * a + (1 - m) * b for a, b in zip(bank_s[i].tolist(), e)]
        assert loss.memory_s[i].tolist() == pytest.approx(unit(torch.tensor([mixed]))[0], abs=1e-5)
    untouched = [i for i in range(10) if i not in idx.tolist()]
    assert torch.equal(loss.memory_s[untouched], bank_s[untouched])
    with pytest.raises(KdflowError, match="indices"):
        loss(inputs(torch.zeros(2, 3), **feats(f_s, f_t)))


def test_crd_parameter_errors():
    with pytest.raises(KdflowError, match="'memory'.*bank, queue"):
        create_loss("crd", {"student": "a", "teacher": "b", "memory": "ring"})
    with pytest.raises(KdflowError, match="'num_negatives'"):
        create_loss("crd", {"student": "a", "teacher": "b", "num_negatives": 0})
    with pytest.raises(KdflowError, match="needs parameter 'student'"):
        create_loss("crd", {"teacher": "b"})
    with pytest.raises(KdflowError, match="training set size"):
        create_loss("crd", {"student": "a", "teacher": "b"}).build({"a": (4,)}, {"b": (4,)})


# ---------------------------------------------------------------- gradients (float64)


def _gradcheck(name, params, s_shape, t_shape, with_logits=False, build=None):
    loss = create_loss(name, params).double()
    if build:
        build(loss)
        loss.double()
    s = fixed(*s_shape, seed=30, dtype=torch.float64).requires_grad_(True)
    t = fixed(*t_shape, seed=31, dtype=torch.float64)

    def fn(x):
        if with_logits:
            inp = KDInputs(student_logits=x, teacher_logits=t, targets=torch.tensor([0, 2, 1, 3][: len(x)]))
        else:
            inp = KDInputs(
                student_logits=torch.zeros(len(x), 3, dtype=torch.float64),
                teacher_logits=None,
                targets=torch.zeros(len(x), dtype=torch.long),
                **feats(x, t),
            )
        return sum(loss(inp).values())

    assert torch.autograd.gradcheck(fn, (s,), eps=1e-6, atol=1e-5)


PAIR = {"pairs": [{"student": "s", "teacher": "t"}]}


@pytest.mark.parametrize(
    "name,params,s_shape,t_shape,logits",
    [
        ("dkd", {}, (4, 5), (4, 5), True),
        ("dist", {"temperature": 2.0}, (4, 5), (4, 5), True),
        ("logit_mse", {"center": True}, (4, 5), (4, 5), True),
        ("ttm", {"temperature": 3.0, "weighted": True}, (4, 5), (4, 5), True),
        ("at", PAIR, (3, 2, 4, 4), (3, 3, 2, 2), False),
        ("pkt", PAIR, (4, 5), (4, 3), False),
        ("rkd", PAIR, (4, 5), (4, 3), False),
        ("sp", PAIR, (4, 2, 2, 2), (4, 6), False),
    ],
)
def test_gradcheck_float64(name, params, s_shape, t_shape, logits):
    build = (lambda loss: loss.build({"s": s_shape[1:]}, {"t": t_shape[1:]})) if name == "at" else None
    _gradcheck(name, params, s_shape, t_shape, logits, build)


def test_gradcheck_crd_float64():
    """Through the embedding heads and the NCE critic; bank mode in eval (memories are constants)."""
    torch.manual_seed(0)
    loss = create_loss("crd", {"student": "s", "teacher": "t", "feat_dim": 4, "num_negatives": 5})
    loss.bind_dataset(8)
    loss.build({"s": (5,)}, {"t": (3,)})
    loss.double().eval()
    loss.log_z.fill_(0.3)
    negatives = torch.tensor([0, 6, 7, 1, 2])
    loss._negatives = lambda device: negatives
    s = fixed(3, 5, seed=32, dtype=torch.float64).requires_grad_(True)
    t = fixed(3, 3, seed=33, dtype=torch.float64)

    def fn(x):
        inp = KDInputs(
            student_logits=torch.zeros(3, 3, dtype=torch.float64),
            teacher_logits=None,
            targets=torch.zeros(3, dtype=torch.long),
            indices=torch.tensor([3, 4, 5]),
            **feats(x, t),
        )
        return loss(inp)["crd"]

    assert torch.autograd.gradcheck(fn, (s,), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------- connectors per layer pair


def test_connector_chosen_per_pair():
    loss = create_loss(
        "fitnet",
        {
            "pairs": [
                {"student": "a", "teacher": "b"},
                {"student": "a", "teacher": "b", "connector": "conv"},
                {"student": "v", "teacher": "w", "connector": "linear"},
            ]
        },
    )
    loss.build({"a": (4, 3, 3), "v": (5,)}, {"b": (4, 3, 3), "w": (5,)})
    identity, conv, linear = loss.connectors
    assert isinstance(identity, torch.nn.Identity)  # 'auto' and equal shapes
    assert isinstance(conv.conv, torch.nn.Conv2d) and conv.conv.kernel_size == (1, 1)
    assert isinstance(conv.bn, torch.nn.BatchNorm2d) and isinstance(linear, torch.nn.Linear)
    with pytest.raises(KdflowError, match="'connector' must be one of auto, conv, linear, none"):
        create_loss("fitnet", {"pairs": [{"student": "a", "teacher": "b", "connector": "mlp"}]})
    bad = create_loss("fitnet", {"pairs": [{"student": "a", "teacher": "v", "connector": "linear"}]})
    with pytest.raises(KdflowError) as err:
        bad.build({"a": (4, 3, 3)}, {"v": (5,)})
    assert "student 'a' -> teacher 'v'" in str(err.value) and "(4, 3, 3)" in str(err.value)
