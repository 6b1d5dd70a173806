"""Where computation runs: device selection, mixed precision, CPU threads, worker processes, freed memory."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import multiprocessing.context
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from grappa_cli.errors import GrappaError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from grappa_cli.config_sections import RuntimeSection


def resolve_device(name: str = "auto") -> torch.device:
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


@dataclasses.dataclass(frozen=True)
class Precision:
    """Where models run under bf16 autocast: on CUDA (``[runtime] amp``) and on the CPU (``cpu_amp``).

    On a GPU bf16 is the default: tensor cores make it several times faster. On a CPU it is
    opt-in: it pays only where the CPU has bf16 instructions and the images are large (1.6x
    for training and 2.3x for inference at 224 px on an AVX512-BF16 CPU, slower at 96 px; the
    benchmarks page), and it changes the numbers, so a project's results say whether they were
    made with it (:func:`precision_params`).
    """

    cuda: bool = True
    cpu: bool = False

    @classmethod
    def of(cls, runtime: RuntimeSection) -> Precision:
        """The precision of a ``[runtime]`` section."""
        return cls(cuda=bool(runtime.amp), cpu=bool(runtime.cpu_amp))

    def on(self, device: torch.device) -> bool:
        """Whether ``device`` runs under bf16 autocast."""
        return (self.cuda and device.type == "cuda") or (self.cpu and device.type == "cpu")


def precision_params(runtime: RuntimeSection) -> dict[str, object]:
    """The fingerprint entries of ``[runtime]``'s precision: ``{"cpu_amp": True}`` when it is on.

    Empty when off, so that results made before the setting existed stay current. ``amp``
    (CUDA) is not part of it: it never was, and the device is not part of a fingerprint either.
    """
    return {"cpu_amp": True} if runtime.cpu_amp else {}


def autocast(device: torch.device, enabled: bool | Precision = True) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast where ``enabled`` asks for it on ``device``, else a no-op context.

    A plain bool is ``[runtime] amp``: CUDA only, the CPU stays in float32 (exact there).
    """
    import torch

    precision = enabled if isinstance(enabled, Precision) else Precision(cuda=bool(enabled), cpu=False)
    if precision.on(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it, slowly."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


#: Items a DataLoader worker must have to decode before starting it pays: a spawned worker
#: imports torch and timm again (12-36 s on a loaded 2-core machine, about 1.1 GB resident with
#: a CUDA build of torch), while the main process decodes and transforms about 280 images/s.
MIN_ITEMS_PER_WORKER = 1000


def loader_workers(requested: int, batches: int, items: int | None = None) -> int:
    """DataLoader worker processes worth starting for a loader of ``batches`` batches (``items`` items).

    Every worker is a spawned interpreter that imports torch again (seconds each, more on a
    loaded machine, and its own copy of torch in memory), so small loaders decode in the main
    process: a single batch, or fewer than :data:`MIN_ITEMS_PER_WORKER` items per worker. There
    are never more workers than batches or than usable cores (torch warns beyond that, and extra
    workers only compete for the same cores). What is computed does not change.
    """
    if requested <= 0 or batches <= 1:
        return 0
    workers = min(int(requested), int(batches), usable_cpus())
    if items is not None:
        workers = min(workers, int(items) // MIN_ITEMS_PER_WORKER)
    return max(0, workers)


#: ``GOMP_SPINCOUNT`` when the cores are free at start: a waiting OpenMP thread spins this many
#: times (about a tenth of a millisecond on this project's 2-core test machine), then sleeps. A
#: training step runs about a thousand parallel regions back to back, and a sleeping thread takes
#: tens of microseconds to wake for the next one: spinning briefly trained the demo's adaptor sets
#: 1.2-1.3x faster on two quiet cores, where a busy machine costs the spin (up to 1.4x slower
#: beside two CPU-bound processes; benchmarks/bench_threads.py, docs/benchmarks.md).
SPIN_COUNT = 10_000


def runnable_others(samples: int = 5, interval_s: float = 0.004) -> int | None:
    """Processes other than this one that run or wait for a core now, machine-wide; None off Linux.

    ``procs_running`` of ``/proc/stat`` counts the runnable threads of the whole machine, this
    one's reading thread included. The smallest of a few readings a few milliseconds apart is
    taken, so that a short-lived process (a shell, a ``grep``) does not count as load, while a
    CPU-bound process shows in every reading.
    """
    import time

    counts = []
    for i in range(samples):
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                line = next((row for row in stat if row.startswith("procs_running")), None)
        except OSError:
            return None
        if line is None:
            return None
        counts.append(int(line.split()[1]))
        if i + 1 < samples:
            time.sleep(interval_s)
    return max(0, min(counts) - 1)


def cpu_thread_settings(environ: Mapping[str, str] | None = None, *, cores: int | None = None,
                        others: int | Callable[[], int | None] | None = runnable_others) -> dict[str, str]:
    """The OpenMP settings a ``grappa`` process should start with (those the user did not set).

    * ``OMP_NUM_THREADS``: the usable cores, whatever the machine's load. The thread count sets
      the order of floating-point reductions, so a count read from the load average made the
      same project give other weights on a busy machine than on a quiet one; with a count fixed
      per machine a project's results depend only on its data, settings, seed, versions and the
      machine's cores (recorded with every artifact: :func:`grappa_cli.records.provenance.compute_conditions`).
    * How waiting threads wait, which changes the time, never a number. When the machine's
      other runnable processes and these threads fit its cores (``others``: :func:`runnable_others`
      at start), ``GOMP_SPINCOUNT`` = :data:`SPIN_COUNT`: a thread spins briefly before it
      sleeps, and catches the next of a step's many small parallel regions awake. Otherwise
      (or where the load cannot be read, or under ``torchrun``, whose ranks share the cores)
      ``OMP_WAIT_POLICY=PASSIVE``: threads that wait sleep at once, because a thread spinning
      on a core that another process needs slows both (libgomp's default spin made 2-thread
      inference about 9x slower on a loaded 2-core machine).

    ``environ`` defaults to ``os.environ``; values already there are kept (either wait variable
    set by the user leaves the waits to the user).
    """
    import os

    environ = os.environ if environ is None else environ
    cores = usable_cpus() if cores is None else cores
    threads = max(1, cores)
    settings: dict[str, str] = {}
    if "OMP_NUM_THREADS" not in environ:
        settings["OMP_NUM_THREADS"] = str(threads)
    else:
        with contextlib.suppress(ValueError):
            threads = max(1, int(environ["OMP_NUM_THREADS"]))
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        busy = others() if callable(others) else others
        alone = environ.get("WORLD_SIZE", "1").strip() in ("", "1")  # torchrun's ranks share the cores
        machine = os.cpu_count() or threads
        if busy is not None and alone and busy + threads <= machine:
            settings["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
        else:
            settings["OMP_WAIT_POLICY"] = "PASSIVE"
    return settings


def configure_cpu_threads() -> dict[str, str]:
    """Apply :func:`cpu_thread_settings` to this process's environment (before torch loads)."""
    import os

    settings = cpu_thread_settings()
    os.environ.update(settings)
    return settings


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


def maybe_compile(model: torch.nn.Module, enabled: bool | None = None) -> torch.nn.Module:
    """``torch.compile(model)`` for inference when requested (see :data:`COMPILE_ENV`), else ``model``.

    Shapes are static (one graph for full batches, one more for a short last batch), which
    is what inference over fixed-size batches needs and what compiles best.
    """
    if not compile_requested(enabled):
        return model
    import torch

    return cast("torch.nn.Module", torch.compile(model, dynamic=False))  # an OptimizedModule wrapping it


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
        self._pending: deque[tuple[torch.Tensor, torch.cuda.Event, Any]] = deque()  # (host copy, copied, tag)

    def push(self, tensor: torch.Tensor, tag: Any) -> list[tuple[np.ndarray, Any]]:
        import torch

        if tensor.device.type != "cuda":
            return [(tensor.detach().numpy(), tag)]
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor.detach(), non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(tensor.device))
        self._pending.append((host, done, tag))
        return self._drain(self.in_flight)

    def flush(self) -> list[tuple[np.ndarray, Any]]:
        return self._drain(0)

    def _drain(self, keep: int) -> list[tuple[np.ndarray, Any]]:
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


def spawn_context() -> QuietSpawnContext:
    """The ``spawn`` multiprocessing context, with workers that ignore Ctrl-C from birth.

    ``SIGINT`` is ignored in the parent just while a worker is started: a disposition of
    "ignore" survives ``exec``, so the new interpreter never installs its
    ``KeyboardInterrupt`` handler, even while it is still importing (when a worker
    initialiser could not run yet). The parent alone turns Ctrl-C into one message.
    """
    return _SPAWN


def return_freed_memory() -> bool:
    """Hand the heap memory that freed tensors and Python objects left behind back to the system.

    glibc keeps freed blocks in its heaps for reuse, so after a stage that trained a model the
    process stays as large as the training's peak although nothing holds those tensors any more
    (measured on the demo: 1.57 GB after Grappa-N's training, 0.78 GB after this call). The next
    stage would then reach its own peak on top of that. True where glibc's ``malloc_trim`` ran;
    elsewhere (macOS, musl, Windows) it does nothing and says False.
    """
    import ctypes

    # No garbage collection first: tensors are freed by reference counting as a stage ends (a
    # collection after Grappa-N's training freed nothing), and a full collection costs tens of
    # milliseconds per call in a process holding millions of objects (a test run, a notebook).
    trim = _libc_function("malloc_trim", [ctypes.c_size_t])
    if trim is None:
        return False
    trim(0)
    return True


#: ``mallopt`` parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
#: free memory at the top of the heap that glibc keeps instead of trimming it after each free
KEPT_FREE_BYTES = 1 << 30
#: ``GRAPPA_REUSE_MEMORY=0``: leave glibc's allocator as it is (see :func:`reuse_freed_memory`)
REUSE_MEMORY_ENV = "GRAPPA_REUSE_MEMORY"


def reuse_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed ones there for reuse (glibc's ``mallopt``).

    Training and embedding allocate the same activation tensors of tens of megabytes on every
    step. glibc serves a block above its mmap threshold (dynamic, at most 32 MiB) with fresh
    pages from ``mmap`` and unmaps it when it is freed, so each step faults in and zeroes its
    activations again: forward and backward of EfficientNet-Lite0 on 60 images at 224 px took
    3.7-4.7 s a step, half of it system time (4.8 million page faults in 5 steps), and 1.9-2.2 s
    with this setting, with bit-identical gradients (``benchmarks/bench_malloc.py``). With mmap off
    for the heap and a high trim threshold, freed blocks stay in the heap and the next step
    reuses them; :func:`return_freed_memory` still hands them back between stages and evaluated
    models, so a stage's peak does not carry over to the next.

    The cost is memory: the heap holds the blocks in the order the steps left them, so a
    training step's peak is higher than with fresh pages (an adaptor set at 224 px, batch 60:
    5.7 GB against 3.7 GB; the demo at 96 px: 1.49 GB against 1.41 GB). ``GRAPPA_REUSE_MEMORY=0``
    keeps glibc's default where memory is short. Called once at the start of a ``grappa``
    process (before torch loads or after, either works). True where glibc's ``mallopt`` took
    both settings; False where the variable turned it off or elsewhere (macOS, musl, Windows),
    where it does nothing.
    """
    import ctypes
    import os

    if os.environ.get(REUSE_MEMORY_ENV, "1") == "0":
        return False
    mallopt = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, KEPT_FREE_BYTES))


def _libc_function(name: str, argtypes: list[Any]) -> Callable[..., int] | None:
    """The C library's function ``name`` returning an int, or None where there is none (not glibc)."""
    import ctypes

    library = _libc_name()
    if library is None:
        return None
    try:
        function = getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return cast("Callable[..., int]", function)


@functools.cache
def _libc_name() -> str | None:
    """The C library's file name (looked up once: ``find_library`` may run a compiler or ldconfig)."""
    import ctypes.util

    return ctypes.util.find_library("c")
