"""TensorBoard curves of a training run: the records of its ``metrics.jsonl``, mirrored as scalars.

``metrics.jsonl`` stays the run's record (``grappa status`` and ``grappa fuse --inspect`` read
it); TensorBoard is a view of the same numbers, so every scalar here is a field of a record
written there, at the record's global step:

* ``step`` records: ``loss``, ``lr``, ``step_time_s``, ``images_per_s``;
* ``epoch`` records: ``epoch/loss``, ``epoch/lr``, ``epoch/step_time_s``, ``epoch/images_per_s``,
  ``epoch/seconds`` (at the epoch's last step);
* ``attention`` records of fusion runs (at the global step when they were taken: 0 before
  training, the epoch's last step after it): ``attention/entropy/layer_<l>``,
  ``attention/alpha/layer_<l>/<set>``, ``attention/logit_scale/layer_<l>``,
  ``attention/q_norm/layer_<l>``, ``attention/k_norm/layer_<l>``.

The event files go into the run directory itself, beside ``metrics.jsonl``, so ``tensorboard
--logdir <project>/checkpoints/runs`` shows one run per adaptor set and fusion strategy. A
resumed run writes a new event file that starts with a restart marker at the step after its
checkpoint: TensorBoard then hides what the killed process logged past the checkpoint (as
``metrics.jsonl`` drops those records) and the curves continue at the same global steps.

Records reach the writer through :meth:`grappa_cli.train.checkpoint.RunDir.append_metrics`,
which calls :func:`mirror`: the loop's step and epoch records and the attention records that
fusion writes from its epoch callbacks all go through there, so no writer has to be threaded
through those callbacks. Only the process that opened the run (rank 0) has it open.

TensorBoard is optional: without the ``tensorboard`` package training runs as before and the
first run of the process says once how to install it. It is imported only when a run opens, so
``grappa --help`` never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grappa_cli.console import Reporter

if TYPE_CHECKING:  # annotations only: tensorboard is optional and imported when a run opens
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["INSTALL_HINT", "RunCurves", "mirror", "open_run", "scalars"]

#: Said once per process when a run trains without the ``tensorboard`` package.
INSTALL_HINT = 'TensorBoard curves of training runs need tensorboard: pip install "grappa-cli[tensorboard]"'

#: Seconds between the writer's own background flushes (it also flushes after every epoch).
_FLUSH_SECS = 30

#: The curves of every run directory open in this process, by absolute path.
_OPEN: dict[Path, RunCurves] = {}
#: Whether this process already said :data:`INSTALL_HINT`.
_hinted = False


def _key(run_dir: Path | str) -> Path:
    return Path(run_dir).absolute()


def _number(value: object) -> float | None:
    """``value`` as a finite float, or None (strings such as a diverged loss, None, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def scalars(record: dict[str, Any], step: int) -> tuple[int, list[tuple[str, float]]]:
    """The global step and the ``(tag, value)`` pairs of one metrics record.

    ``step`` is the run's current global step, used for records that carry none (attention
    records). Unknown kinds and non-numeric fields give no scalars.
    """
    kind = record.get("kind")
    at = int(record["step"]) if _number(record.get("step")) is not None else step
    fields: list[tuple[str, object]] = []
    if kind == "step":
        fields = [(name, record.get(name)) for name in ("loss", "lr", "step_time_s", "images_per_s")]
    elif kind == "epoch":
        fields = [(f"epoch/{name}", record.get(name))
                  for name in ("loss", "lr", "step_time_s", "images_per_s", "seconds")]
    elif kind == "attention":
        sets = record.get("sets") or []
        for layer in record.get("layers") or []:
            index = layer.get("layer")
            for name in ("entropy", "logit_scale", "q_norm", "k_norm"):
                fields.append((f"attention/{name}/layer_{index}", layer.get(name)))
            alphas = layer.get("mean_alpha") or []
            names = sets if len(sets) == len(alphas) else [f"set_{j}" for j in range(len(alphas))]
            fields.extend((f"attention/alpha/layer_{index}/{name}", alpha)
                          for name, alpha in zip(names, alphas, strict=True))
    pairs = [(tag, number) for tag, value in fields if (number := _number(value)) is not None]
    return at, pairs


def _summary_writer_class() -> type[SummaryWriter] | None:
    """``torch.utils.tensorboard.SummaryWriter``, or None when ``tensorboard`` is not installed."""
    try:
        # Imported here, not at module level: tensorboard is an optional extra, and neither
        # `grappa --help` nor a project without it may pay for (or fail on) the import. The
        # package itself is imported first because torch's module may be loaded already.
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class RunCurves:
    """The TensorBoard writer of one run directory, made on the first record it mirrors.

    Made lazily so that a run that turns out to have nothing to train leaves no empty event
    file. ``start_step`` is the global step of the checkpoint the run resumes from (0 for a new
    run); the event file starts with a restart marker just after it (see the module docstring).
    """

    def __init__(self, run_dir: Path, start_step: int, writer_class: type[SummaryWriter]) -> None:
        self.run_dir = Path(run_dir)
        self.step = int(start_step)
        self._purge_step = self.step + 1 if self.step > 0 else 0
        self._writer_class = writer_class
        self._writer: SummaryWriter | None = None

    def add(self, record: dict[str, Any]) -> None:
        """Write the scalars of one metrics record (see :func:`scalars`)."""
        at, pairs = scalars(record, self.step)
        self.step = max(self.step, at)
        if not pairs:
            return
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.run_dir), purge_step=self._purge_step,
                                              flush_secs=_FLUSH_SECS)
        walltime = _number(record.get("time"))
        for tag, value in pairs:
            self._writer.add_scalar(tag, value, global_step=at, walltime=walltime)

    def flush(self) -> None:
        """Put everything written so far on disk (after every epoch, for a live TensorBoard)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _NoCurves:
    """Stands in for :class:`RunCurves` on other ranks and without tensorboard."""

    def flush(self) -> None:
        pass


def _hint_once(reporter: Reporter) -> None:
    global _hinted
    if _hinted:
        return
    _hinted = True
    from rich.markup import escape

    reporter.log(escape(INSTALL_HINT))  # reporter messages are rich markup; "[tensorboard]" is not


@contextmanager
def open_run(
    run_dir: Path, start_step: int, reporter: Reporter, *, enabled: bool = True,
) -> Iterator[RunCurves | _NoCurves]:
    """Mirror the metrics records of ``run_dir`` into TensorBoard while the block runs.

    Yields an object with ``flush()``; the writer is closed when the block ends, also on an
    error or Ctrl-C, so that what was logged up to then is on disk. ``enabled=False`` (every
    rank but 0, or a run with nothing left to train) mirrors nothing and says nothing.
    """
    writer_class = _summary_writer_class() if enabled else None
    if writer_class is None:
        if enabled:
            _hint_once(reporter)
        yield _NoCurves()
        return
    key = _key(run_dir)
    curves = RunCurves(run_dir, start_step, writer_class)
    _OPEN[key] = curves
    try:
        yield curves
    finally:
        if _OPEN.get(key) is curves:
            del _OPEN[key]
        curves.close()


def mirror(run_dir: Path | str, record: dict[str, Any]) -> None:
    """Hand one record just appended to ``run_dir``'s ``metrics.jsonl`` to its open writer, if any."""
    curves = _OPEN.get(_key(run_dir))
    if curves is not None:
        curves.add(record)
