"""Sequence models: padding never changes a prediction, features by module path (packed RNN
outputs included), teacher-layer initialisation, cost profile on token ids, config errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from kdcore.errors import KdflowError
from kdcore.evaluate import model_profile
from kdcore.hooks import FeatureTap, probe_shapes
from kdcore.models import create_model, init_from_teacher

VOCAB, FEATURES = 50, 12

CASES = [
    ("text_rnn", {"cell": "gru", "num_layers": 2, "bidirectional": True, "pooling": "last"}),
    ("text_rnn", {"cell": "lstm", "bidirectional": True, "pooling": "attention"}),
    ("text_rnn", {"cell": "gru", "pooling": "mean"}),
    ("speech_rnn", {"cell": "gru", "num_layers": 2, "bidirectional": True, "pooling": "mean", "dropout": 0.2}),
    ("speech_rnn", {"cell": "lstm", "pooling": "last"}),
    ("text_transformer", {"pooling": "attention", "num_layers": 2}),
    ("speech_transformer", {"pooling": "mean", "num_layers": 1}),
]


def sample(arch: str, length: int, gen: torch.Generator) -> torch.Tensor:
    """One unpadded sample [1, length] of token ids or [1, length, F + 1] of frames with its mask."""
    if arch.startswith("text"):
        return torch.randint(2, VOCAB, (1, length), generator=gen)
    frames = torch.randn(1, length, FEATURES, generator=gen)
    return torch.cat([frames, torch.ones(1, length, 1)], dim=-1)


def pad_batch(samples: list[torch.Tensor], steps: int, noise: bool = False) -> torch.Tensor:
    """Samples padded to ``steps``: ids with PAD 0; frames with mask 0 (and, if ``noise``, junk features)."""
    first = samples[0]
    out = torch.zeros((len(samples), steps, *first.shape[2:]), dtype=first.dtype)
    if noise and first.is_floating_point():
        out[..., :-1] = torch.randn(out[..., :-1].shape) * 100  # whatever lies under a 0 mask is ignored
    for i, s in enumerate(samples):
        out[i, : s.shape[1]] = s[0]
    return out


def build(arch: str, kwargs: dict) -> nn.Module:
    torch.manual_seed(0)
    in_channels = VOCAB if arch.startswith("text") else FEATURES
    return create_model(arch, in_channels=in_channels, num_classes=4, **kwargs).eval()


@pytest.mark.parametrize("arch,kwargs", CASES)
def test_padding_never_changes_a_prediction(arch, kwargs):
    model = build(arch, kwargs)
    gen = torch.Generator().manual_seed(1)
    alone = sample(arch, 7, gen)
    others = [sample(arch, n, gen) for n in (15, 3, 11)]
    with torch.no_grad():
        ref = model(alone)[0]
        in_batch = model(pad_batch([others[0], alone, *others[1:]], 20, noise=True))
        padded_alone = model(pad_batch([alone], 20))[0]
    assert torch.allclose(in_batch[1], ref, atol=1e-5), (in_batch[1] - ref).abs().max()
    assert torch.allclose(padded_alone, ref, atol=1e-5)
    # and the prediction does depend on the sample's own content
    assert not torch.allclose(in_batch[0], ref, atol=1e-3)


def test_rnn_output_sequence_and_final_state_by_module_path():
    model = build("text_rnn", {"num_layers": 2, "bidirectional": True, "hidden_size": 16, "pooling": "last"})
    gen = torch.Generator().manual_seed(2)
    batch = pad_batch([sample("text_rnn", n, gen) for n in (5, 9)], 12)
    with FeatureTap(model, ["rnn", "rnn.0", "pool", "embed"]) as tap, torch.no_grad():
        model(batch)
    seq, pooled = tap.features["rnn"], tap.features["pool"]
    assert seq.shape == (2, 12, 32) and tap.features["rnn.0"].shape == (2, 12, 32) and pooled.shape == (2, 32)
    assert (seq[0, 5:] == 0).all() and (seq[1, 9:] == 0).all() and (seq[0, :5] != 0).any()
    # final states: forward direction at the last real step, backward direction at step 0
    assert torch.equal(pooled[0], torch.cat([seq[0, 4, :16], seq[0, 0, 16:]]))
    assert torch.equal(pooled[1], torch.cat([seq[1, 8, :16], seq[1, 0, 16:]]))
    assert probe_shapes(model, ["rnn", "pool"], batch) == {"rnn": (12, 32), "pool": (32,)}


class PackingModel(nn.Module):
    """A user model that packs its input: its GRU returns (PackedSequence, h_n)."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 5, batch_first=True)

    def forward(self, x):
        lengths = (x.abs().sum(-1) > 0).sum(1)
        out, h = self.gru(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        return h[-1]


def test_tap_unpacks_packed_sequences_to_the_input_length():
    torch.manual_seed(0)
    model = PackingModel()
    x = torch.zeros(3, 10, 3)
    x[0, :4], x[1, :7], x[2, :2] = torch.randn(4, 3), torch.randn(7, 3), torch.randn(2, 3)
    with FeatureTap(model, ["gru"]) as tap, torch.no_grad():
        h = model(x)
    seq = tap.features["gru"]
    assert isinstance(seq, torch.Tensor) and seq.shape == (3, 10, 5)  # padded to T = 10, not to 7
    assert torch.allclose(seq[1, 6], h[1]) and torch.allclose(seq[0, 3], h[0]) and (seq[0, 4:] == 0).all()


@pytest.mark.parametrize("select,layer", [("first", 0), ("last", 1)])
def test_one_layer_student_from_a_two_layer_teacher(select, layer):
    teacher = build("speech_rnn", {"num_layers": 2, "embed_dim": 32, "hidden_size": 32})
    torch.manual_seed(5)
    student = create_model(
        "speech_rnn", in_channels=FEATURES, num_classes=4, num_layers=1, embed_dim=32, hidden_size=32
    )
    copied = init_from_teacher(student, teacher, select=select)
    assert {"embed.weight", "rnn.0.fwd.weight_ih_l0", "rnn.0.fwd.weight_hh_l0", "head.weight"} <= set(copied)
    t_layer = teacher.rnn[layer].fwd
    assert torch.equal(student.rnn[0].fwd.weight_hh_l0, t_layer.weight_hh_l0)
    assert torch.equal(student.rnn[0].fwd.weight_ih_l0, t_layer.weight_ih_l0)
    gen = torch.Generator().manual_seed(3)
    x = pad_batch([sample("speech_rnn", n, gen) for n in (6, 9)], 9)
    with torch.no_grad():  # the copied layer computes what the teacher's first layer computed
        if layer == 0:
            assert torch.allclose(
                student.rnn(student.embed(x[..., :-1]), torch.tensor([6, 9])),
                teacher.rnn[0](teacher.embed(x[..., :-1]), torch.tensor([6, 9])),
                atol=1e-6,
            )


def test_profile_counts_flops_on_token_ids_and_frames():
    big = build("text_rnn", {"embed_dim": 64, "hidden_size": 64, "bidirectional": True})
    small = build("text_rnn", {"embed_dim": 16, "hidden_size": 16})
    example = pad_batch([sample("text_rnn", 9, torch.Generator().manual_seed(0))], 16)[0]
    p_big = model_profile(big, (16,), example=example, latency=False)
    p_small = model_profile(small, (16,), example=example, latency=True, min_run_time=0.01, throughput_batch=8)
    assert p_big["flops"] > 10 * p_small["flops"] > 0 and p_big["params"] > p_small["params"]
    assert p_small["latency_ms"] > 0 and p_small["throughput"] > 0
    speech = build("speech_transformer", {})
    frames = pad_batch([sample("speech_rnn", 5, torch.Generator().manual_seed(0))], 8)[0]
    # every encoder layer's projections count (the attention's fused eval path once hid all but the head):
    # per step and layer, q/k/v/out (4 d^2) and the feed-forward (2 d ff) multiply-adds, 2 FLOPs each
    d, ff, layers, steps = 64, 128, 2, 8
    assert model_profile(speech, (8, FEATURES + 1), example=frames, latency=False)["flops"] >= (
        2 * steps * layers * (4 * d * d + 2 * d * ff)
    )
    assert torch.backends.mha.get_fastpath_enabled()  # the counting leaves the fast path as it was


def test_wrong_inputs_and_settings_fail_clearly():
    with pytest.raises(KdflowError, match="pooling must be one of last, mean, attention"):
        create_model("text_rnn", in_channels=VOCAB, num_classes=2, pooling="max")
    with pytest.raises(KdflowError, match="cell must be one of gru, lstm"):
        create_model("speech_rnn", in_channels=FEATURES, num_classes=2, cell="rnn")
    with pytest.raises(KdflowError, match="divisible by nhead"):
        create_model("text_transformer", in_channels=VOCAB, num_classes=2, d_model=30, nhead=4)
    with pytest.raises(KdflowError, match="takes int64 token ids"):
        build("text_rnn", {})(torch.randn(2, 5, 3))
    with pytest.raises(KdflowError, match=r"takes float frames \[N, T, F \+ 1\]"):
        build("speech_rnn", {})(torch.ones(2, 5, dtype=torch.long))
