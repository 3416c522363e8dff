"""The compute gate (tasks/compute_gate.py): a model trace (torch.export, as MLflow's log_model does)
never runs beside a stage's training, so a stage's weights do not depend on what another thread of
the flow is doing. Ungated, the same trace in another thread changes the trained weights
(bench/export_race.py prints both)."""

from __future__ import annotations

import hashlib
import threading
import time

import torch

from kdcore.models import create_model
from tasks.compute_gate import ComputeGate


def _train() -> str:
    torch.manual_seed(0)
    model = create_model("cnn_small", in_channels=1, num_classes=10)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(256, 1, 28, 28, generator=g), torch.randint(0, 10, (256,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for it in range(24):
        i = (it * 64) % 256
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()


def test_a_trace_waits_until_nothing_computes():
    gate, order = ComputeGate(), []
    computing, tracing_waits = threading.Event(), threading.Event()

    def compute(tag: str, hold: float) -> None:
        with gate.computing():
            order.append(f"{tag} start")
            computing.set()
            time.sleep(hold)
            order.append(f"{tag} end")

    def trace() -> None:
        tracing_waits.set()
        with gate.tracing():
            order.append("trace")

    first = threading.Thread(target=compute, args=("a", 0.6))
    first.start()
    computing.wait()
    tracer = threading.Thread(target=trace)
    tracer.start()
    tracing_waits.wait()
    time.sleep(0.1)
    second = threading.Thread(target=compute, args=("b", 0.0))  # compute beside compute: no wait
    second.start()
    for t in (first, tracer, second):
        t.join(10)
    assert order == ["a start", "b start", "b end", "a end", "trace"]


def test_a_stage_the_flow_waits_on_traces_before_a_side_branch_and_before_new_compute():
    """The teacher (reserve=True) ends its compute while the baseline's trace waits: the teacher's
    trace goes first, and the features stage, arriving in between, computes only after it."""
    gate, order = ComputeGate(), []
    teacher_computes, baseline_waits = threading.Event(), threading.Event()

    def teacher() -> None:
        with gate.computing(reserve=True):
            teacher_computes.set()
            baseline_waits.wait(10)
            time.sleep(0.2)
        time.sleep(0.2)  # between its compute and its trace (the task's other work)
        with gate.tracing():
            order.append("teacher trace")
        gate.release()

    def baseline_trace() -> None:
        baseline_waits.set()
        with gate.tracing():
            order.append("baseline trace")

    def features() -> None:
        with gate.computing():
            order.append("features compute")

    t = threading.Thread(target=teacher)
    t.start()
    teacher_computes.wait(10)
    b = threading.Thread(target=baseline_trace)
    b.start()
    time.sleep(0.3)  # the teacher's compute has ended; its trace is reserved, not yet started
    f = threading.Thread(target=features)
    f.start()
    for th in (t, b, f):
        th.join(10)
    assert order[0] == "teacher trace", order
    assert set(order) == {"teacher trace", "baseline trace", "features compute"}


def test_a_stage_that_fails_between_compute_and_trace_releases_its_reservation():
    gate = ComputeGate()
    with gate.computing(reserve=True):
        pass
    gate.release()  # what the stage wrapper does when the body ends
    done = threading.Event()

    def other_trace() -> None:
        with gate.tracing():
            done.set()

    threading.Thread(target=other_trace).start()
    assert done.wait(5)


def test_training_beside_gated_torch_export_gives_the_weights_of_training_alone():
    torch.set_num_threads(1)
    alone = _train()
    gate, stop, traced = ComputeGate(), threading.Event(), []
    model = create_model("cnn_tiny", in_channels=1, num_classes=10).eval()
    example = torch.randn(2, 1, 28, 28)

    def keep_tracing() -> None:
        while not stop.is_set():
            with gate.tracing():
                torch.export.export(model, (example,))
                traced.append(1)

    other = threading.Thread(target=keep_tracing)
    other.start()
    try:
        while not traced:  # the tracer runs before and after each training
            time.sleep(0.01)
        hashes = []
        for _ in range(2):
            with gate.computing():
                hashes.append(_train())
            before = len(traced)
            while len(traced) == before:
                time.sleep(0.01)
    finally:
        stop.set()
        other.join(60)
    assert hashes == [alone, alone]
