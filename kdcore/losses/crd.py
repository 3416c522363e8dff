"""``crd``: Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020).

Student and teacher features (flattened) are embedded by learned linear heads into a common
``feat_dim``-dimensional space and L2-normalised. A critic h(t, s) = P / (P + K/M), with
P = exp(<e_t, e_s> / temperature) / Z, tells matching (same sample) pairs from K negatives; the
loss per side is the paper's NCE objective

    L = -E_pos[log h] - K * E_neg[log(1 - h)]

with the normalisation Z estimated once, on the first training batch, as M times the mean of
exp(logit) (as in the authors' code; M, the dataset size, then cancels out of h). Both sides are
trained and summed: the student embedding against teacher memories and the teacher embedding
against student memories.

Negatives come from

* ``memory: bank`` (the paper): one momentum-updated embedding per training sample and side
  (2 x N x feat_dim floats, kept in the loss's state); the batch's rows are the positives, found by
  the batch's dataset indices (``KDInputs.indices``); K negatives are drawn uniformly per batch
  and shared by its samples (one matrix product instead of a gather per sample);
* ``memory: queue``: the last K embeddings of each side (MoCo-style FIFO), positives are the
  batch's own pairs; memory is K x feat_dim whatever the dataset size, and no indices are needed:
  the choice for large datasets.

Outside training (no memory update) without indices, the other samples of the batch serve as
negatives.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kdcore.errors import KdflowError
from kdcore.losses.inputs import KDInputs
from kdcore.losses.registry import LOSSES, DistillLoss, Shapes, check_number

MEMORIES = ("bank", "queue")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KdflowError(f"loss 'crd': parameter {name!r} must be a positive integer, got {value!r}")
    return value


def _random_unit(n: int, d: int) -> Tensor:
    return F.normalize(torch.randn(n, d), dim=1)


def nce_loss(pos: Tensor, neg: Tensor, log_z: Tensor, log_noise: float) -> Tensor:
    """Batch mean of -log h(pos) - sum_k log(1 - h(neg_k)), h = P / (P + noise), log P = logit - log Z.

    ``pos`` (B,) and ``neg`` (B, K) are logits <e_a, e_b> / temperature; ``log_noise`` = log(K / M).
    """
    lp_pos = pos - log_z
    lp_neg = neg - log_z
    # -log(P/(P+c)) = softplus(log c - log P);  -log(c/(P+c)) = softplus(log P - log c)
    return (F.softplus(log_noise - lp_pos) + F.softplus(lp_neg - log_noise).sum(dim=1)).mean()


@LOSSES.register("crd")
class CRDLoss(DistillLoss):
    """NCE contrastive loss between embedded student and teacher features; one term ``crd``."""

    name = "crd"
    needs_teacher = True
    draws_random = True  # negatives are sampled from torch's global generator every step (kdcore.train.rng)

    # buffers, registered in __init__ / build()
    log_z: Tensor
    memory_s: Tensor
    memory_t: Tensor
    queue_ptr: Tensor

    def __init__(
        self,
        *,
        student: str,
        teacher: str,
        feat_dim: int = 128,
        num_negatives: int = 4096,
        temperature: float = 0.07,
        momentum: float = 0.5,
        memory: str = "bank",
    ) -> None:
        super().__init__()
        for key, path in (("student", student), ("teacher", teacher)):
            if not isinstance(path, str) or not path:
                raise KdflowError(f"loss 'crd': parameter {key!r} must be a module path, got {path!r}")
        if memory not in MEMORIES:
            raise KdflowError(f"loss 'crd': parameter 'memory' must be one of {', '.join(MEMORIES)}, got {memory!r}")
        self.student, self.teacher, self.memory = student, teacher, memory
        self.feat_dim = _positive_int("feat_dim", feat_dim)
        self.num_negatives = _positive_int("num_negatives", num_negatives)
        self.temperature = check_number("crd", "temperature", temperature, low=0.0, low_inclusive=False)
        self.momentum = check_number("crd", "momentum", momentum, low=0.0, low_inclusive=True, high=1.0)
        self.student_paths, self.teacher_paths = [student], [teacher]
        self.num_samples: Optional[int] = None
        self.embed_s: Optional[nn.Linear] = None
        self.embed_t: Optional[nn.Linear] = None
        self.register_buffer("log_z", torch.full((2,), float("nan")))  # [student side, teacher side]
        self._z_known = False

    def bind_dataset(self, num_samples: int) -> None:
        self.num_samples = int(num_samples)

    def build(self, student_shapes: Shapes, teacher_shapes: Shapes) -> None:
        if self.student not in student_shapes or self.teacher not in teacher_shapes:
            raise KdflowError(
                f"loss 'crd': no feature shape known for student {self.student!r} / teacher {self.teacher!r}"
            )
        d_s = math.prod(student_shapes[self.student])
        d_t = math.prod(teacher_shapes[self.teacher])
        self.embed_s = nn.Linear(d_s, self.feat_dim)
        self.embed_t = nn.Linear(d_t, self.feat_dim)
        if self.memory == "bank":
            if not self.num_samples:
                raise KdflowError("loss 'crd' (memory: bank) needs the training set size; the trainer did not give it")
            rows = self.num_samples
        else:
            rows = self.num_negatives
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("memory_s", _random_unit(rows, self.feat_dim))
        self.register_buffer("memory_t", _random_unit(rows, self.feat_dim))

    def _negatives(self, device: torch.device) -> Tensor:
        """K bank rows drawn uniformly (CPU generator: resumable with torch's saved RNG state)."""
        return torch.randint(self.memory_s.shape[0], (self.num_negatives,)).to(device)

    def _update_bank(self, idx: Tensor, e_s: Tensor, e_t: Tensor) -> None:
        m = self.momentum
        for bank, e in ((self.memory_s, e_s), (self.memory_t, e_t)):
            bank[idx] = F.normalize(m * bank[idx] + (1.0 - m) * e.detach().to(bank.dtype), dim=1)

    def _enqueue(self, e_s: Tensor, e_t: Tensor) -> None:
        k = self.memory_s.shape[0]
        n = min(len(e_s), k)
        pos = (self.queue_ptr + torch.arange(n, device=self.memory_s.device)) % k
        self.memory_s[pos] = e_s[-n:].detach().to(self.memory_s.dtype)
        self.memory_t[pos] = e_t[-n:].detach().to(self.memory_t.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % k)

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        if self.embed_s is None or self.embed_t is None:
            raise KdflowError("loss 'crd' was used before build(student_shapes, teacher_shapes)")
        if self.student not in inp.student_features or self.teacher not in inp.teacher_features:
            raise KdflowError(f"loss 'crd': features {self.student!r} / {self.teacher!r} are missing from the batch")
        f_s = inp.student_features[self.student].flatten(1)
        f_t = inp.teacher_features[self.teacher].detach().flatten(1).to(f_s.dtype)
        e_s = F.normalize(self.embed_s(f_s), dim=1)
        e_t = F.normalize(self.embed_t(f_t), dim=1)
        tau = self.temperature
        idx = inp.indices
        if self.memory == "bank" and idx is None and self.training:
            raise KdflowError("loss 'crd' (memory: bank) needs the batch's dataset indices (KDInputs.indices)")
        mem_s, mem_t = self.memory_s.to(e_s.dtype), self.memory_t.to(e_s.dtype)
        if self.memory == "bank" and idx is not None:
            idx = idx.to(mem_s.device)
            neg = self._negatives(mem_s.device)
            pos_s, neg_s = (e_s * mem_t[idx]).sum(1), e_s @ mem_t[neg].t()
            pos_t, neg_t = (e_t * mem_s[idx]).sum(1), e_t @ mem_s[neg].t()
        elif self.memory == "queue":
            pos_s, neg_s = (e_s * e_t.detach()).sum(1), e_s @ mem_t.t()
            pos_t, neg_t = (e_t * e_s.detach()).sum(1), e_t @ mem_s.t()
        else:  # evaluation without indices: the rest of the batch are the negatives
            off = ~torch.eye(len(e_s), dtype=torch.bool, device=e_s.device)
            sim = e_s @ e_t.t()
            pos_s = pos_t = sim.diagonal()
            neg_s = sim[off].view(len(e_s), -1)
            neg_t = sim.t()[off].view(len(e_s), -1)
        logits = [(pos_s / tau, neg_s / tau), (pos_t / tau, neg_t / tau)]
        log_z = self.log_z  # log(Z / M) per side
        if not self._z_known:  # checked (one device sync) until Z is set, then never again
            if bool(torch.isnan(log_z).any()):
                with torch.no_grad():  # estimated once, from the first batch: Z = M * mean(exp(logit))
                    log_z = torch.stack(
                        [
                            torch.logsumexp(torch.cat([p[:, None], n], 1).flatten(), 0)
                            - math.log(p.numel() + n.numel())
                            for p, n in logits
                        ]
                    )
                if self.training:
                    self.log_z.copy_(log_z)
                    self._z_known = True
            else:
                self._z_known = True
        # with Z = M * mean(exp), log(K / M) - log Z = log K - log mean(exp): M cancels out
        log_noise = math.log(neg_s.shape[1])
        (p_s, n_s), (p_t, n_t) = logits
        loss = nce_loss(p_s, n_s, log_z[0], log_noise) + nce_loss(p_t, n_t, log_z[1], log_noise)
        if self.training:
            with torch.no_grad():
                if self.memory == "bank":
                    assert idx is not None  # checked above: training with a bank needs indices
                    self._update_bank(idx, e_s, e_t)
                else:
                    self._enqueue(e_s, e_t)
        return {"crd": loss}
