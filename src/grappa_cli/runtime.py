"""Where computation runs: device selection and mixed precision."""

from __future__ import annotations

import contextlib
import multiprocessing.context
from typing import Any

from grappa_cli.errors import GrappaError


def resolve_device(name: str = "auto") -> Any:
    """``auto`` -> CUDA when available (the local rank's GPU under torchrun), else CPU."""
    import os

    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GrappaError(f"unknown device {name!r}", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GrappaError("--device cuda was asked for but no CUDA device is available",
                          hint="use --device cpu or auto")
    return device


def autocast(device: Any, enabled: bool = True) -> Any:
    """bf16 autocast on CUDA; a no-op context on the CPU (float32 stays exact there)."""
    import torch

    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


#: Set to 1 to run the models of ``grappa extract`` and evaluation (``stages.embed.run_embedding``)
#: through ``torch.compile``. Off by default: compiling costs tens of seconds per model and input
#: shape, and on the CPU it does not pay (``benchmarks/bench_inference.py`` measures both).
COMPILE_ENV = "GRAPPA_COMPILE"


def compile_requested(value: bool | None = None) -> bool:
    """``value`` when given, else whether ``GRAPPA_COMPILE`` is set to 1/true/yes/on."""
    import os

    if value is not None:
        return bool(value)
    return os.environ.get(COMPILE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def maybe_compile(model: Any, enabled: bool | None = None) -> Any:
    """``torch.compile(model)`` for inference when requested (see :data:`COMPILE_ENV`), else ``model``.

    Shapes are static (one graph for full batches, one more for a short last batch), which
    is what inference over fixed-size batches needs and what compiles best.
    """
    if not compile_requested(enabled):
        return model
    import torch

    return torch.compile(model, dynamic=False)


class HostCopies:
    """Bring per-batch results back to the host without making the device wait for the host.

    ``push(tensor, tag)`` starts a non-blocking copy of ``tensor`` into pinned host memory
    and returns the ``(array, tag)`` pairs of earlier batches whose copies have finished,
    keeping ``in_flight`` batches queued behind the device's work: the host waits for batch
    ``i`` only once batch ``i + 1`` is queued, so the device always has work. ``flush()``
    returns the rest. Tensors on the CPU come back at once.
    """

    def __init__(self, in_flight: int = 1) -> None:
        from collections import deque

        self.in_flight = max(0, int(in_flight))
        self._pending: deque[tuple[Any, Any, Any]] = deque()

    def push(self, tensor: Any, tag: Any) -> list[tuple[Any, Any]]:
        import torch

        if tensor.device.type != "cuda":
            return [(tensor.detach().numpy(), tag)]
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor.detach(), non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(tensor.device))
        self._pending.append((host, done, tag))
        return self._drain(self.in_flight)

    def flush(self) -> list[tuple[Any, Any]]:
        return self._drain(0)

    def _drain(self, keep: int) -> list[tuple[Any, Any]]:
        ready = []
        while len(self._pending) > keep:
            host, done, tag = self._pending.popleft()
            done.synchronize()
            ready.append((host.numpy(), tag))
        return ready


def ignore_interrupts(*_: object) -> None:
    """Worker-process initialiser: leave Ctrl-C to the parent, which stops the workers itself.

    A terminal sends SIGINT to the whole process group; without this, every DataLoader or
    decoding worker would print its own ``KeyboardInterrupt`` traceback.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class QuietSpawnProcess(multiprocessing.context.SpawnProcess):
    """A ``spawn`` worker started while the parent ignores ``SIGINT`` (see :func:`spawn_context`)."""

    def start(self) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return super().start()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return super().start()
        finally:
            signal.signal(signal.SIGINT, previous)


class QuietSpawnContext(multiprocessing.context.SpawnContext):
    Process = QuietSpawnProcess


_SPAWN = QuietSpawnContext()


def spawn_context() -> Any:
    """The ``spawn`` multiprocessing context, with workers that ignore Ctrl-C from birth.

    ``SIGINT`` is ignored in the parent just while a worker is started: a disposition of
    "ignore" survives ``exec``, so the new interpreter never installs its
    ``KeyboardInterrupt`` handler, even while it is still importing (when a worker
    initialiser could not run yet). The parent alone turns Ctrl-C into one message.
    """
    return _SPAWN
