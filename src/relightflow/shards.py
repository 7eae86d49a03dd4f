"""The one shard driver: every per-shard stage is a :class:`ShardStage` run by :func:`run_shard`.

A stage subclass writes only what is its own (datatrove's ``PipelineStep`` is the model):

* ``items()`` — what the shard feeds in, in batches (default: the input manifest's rows as dicts);
* ``process(item)`` — one item to its output row(s); raise :class:`~relightflow.errors.BadInput` to
  reject it. Stages that batch a model override ``process_batch(items)`` instead;
* optional ``open``/``close`` (load models lazily), ``info()`` (what shaped the rows), ``finish()`` (extra
  outputs such as contact sheets).

The driver owns the loop, the error policy (:mod:`relightflow.errors`: bad input → a reject row naming the
file and the reason, the shard goes on; environment failure or bug → the job fails, the exception noted
with the item it failed on), the rejects table, the stats (one :class:`Stats` type that adds up) and the
atomic writes (table, rejects, then stats last). :func:`gather` merges any stage's per-shard stats and
rejects. Images in = images kept + images rejected, checked before the stats are written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pandas as pd

from relightflow.errors import BadInput
from relightflow.manifest import (
    REJECT_COLUMNS,
    Reject,
    iter_batches,
    read_json,
    read_tables,
    write_json,
    write_rejects,
    write_table,
)

log = logging.getLogger(__name__)


def reason_key(reason: str) -> str:
    """The reason's class for counting: the text before its first colon."""
    return reason.split(":", 1)[0].strip()


def _add_counts(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Sum two (possibly nested) dicts of numbers key by key."""
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, Mapping):
            out[key] = _add_counts(out[key], value)
        else:
            out[key] = out[key] + value
    return out


def _merge_info(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Descriptive fields kept where both sides agree (a shard's own figures stay in its file)."""
    return {k: v for k, v in a.items() if k in b and b[k] == v}


@dataclass
class Stats:
    """In / kept / rejected counts of one stage on one shard (or, summed with ``+``, on many).

    ``n_rows`` counts rows written (several per image when a stage writes variants); ``counts`` holds
    numbers that add up across shards (cache hits, kinds); ``info`` describes how the rows were made
    (backend, model) and is kept in a sum only where every shard agrees.
    """

    stage: str
    shard: str = ""
    n_in: int = 0
    n_kept: int = 0
    n_rejected: int = 0
    n_rows: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def reject(self, reason: str) -> None:
        self.n_rejected += 1
        key = reason_key(reason)
        self.reasons[key] = self.reasons.get(key, 0) + 1

    def count(self, key: str, n: float = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def __add__(self, other: Stats) -> Stats:
        if other.stage != self.stage:
            raise ValueError(f"cannot add stats of {other.stage!r} to {self.stage!r}")
        return Stats(
            self.stage, "", self.n_in + other.n_in, self.n_kept + other.n_kept,
            self.n_rejected + other.n_rejected, self.n_rows + other.n_rows,
            _add_counts(self.reasons, other.reasons), _add_counts(self.counts, other.counts),
            _merge_info(self.info, other.info), round(self.seconds + other.seconds, 3),
        )  # fmt: skip

    def check(self) -> None:
        """Raise if images went missing: every image in is kept or rejected."""
        if self.n_in != self.n_kept + self.n_rejected:
            raise AssertionError(
                f"{self.stage}/{self.shard}: {self.n_in} in != {self.n_kept} kept + {self.n_rejected} rejected"
            )

    @property
    def survival(self) -> float | None:
        """Fraction of images kept (None when none came in)."""
        return round(self.n_kept / self.n_in, 4) if self.n_in else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "survival": self.survival}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stats:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def read(cls, path: str | os.PathLike) -> Stats:
        return cls.from_dict(read_json(path))

    def write(self, path: str | os.PathLike) -> None:
        self.check()
        write_json(path, self.to_dict())


@dataclass
class Outcome:
    """What became of one item: its output rows, or the reason it was rejected."""

    image_id: str
    path: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    reject: str | None = None


@contextlib.contextmanager
def item_context(stage: str, image_id: Any, path: Any) -> Iterator[None]:
    """Note the item on any exception that escapes (so a failed job's traceback names the file)."""
    try:
        yield
    except BaseException as e:
        if hasattr(e, "add_note"):
            e.add_note(f"relightflow: {stage} failed on image {image_id} ({path})")
        raise


class ShardStage:
    """Base of every per-shard stage (see the module docstring). Subclasses set ``name`` and ``columns``."""

    name: str = "stage"
    columns: Sequence[str] = ()
    batch_size: int = 64
    shard: str = ""  # set by run_shard

    def __init__(self, source: str | os.PathLike | None = None, batch_size: int | None = None):
        self.source = source
        if batch_size:
            self.batch_size = int(batch_size)

    # -- what a subclass may override
    def open(self) -> None:
        """Load what processing needs (models ...); called once before the first batch."""

    def close(self) -> None:
        """Release what :meth:`open` loaded; called even when the shard fails."""

    def items(self) -> Iterator[list[Any]]:
        """Batches of input items: by default the rows of the ``source`` manifest, as dicts."""
        for frame in iter_batches(self.source, self.batch_size):
            yield frame.to_dict("records")

    def identify(self, item: Any) -> tuple[str, str]:
        """(image_id, path) of an item, for reject rows and error notes."""
        return str(item.get("image_id", "")), str(item.get("path", ""))

    def process(self, item: Any) -> dict[str, Any] | list[dict[str, Any]]:
        """Output row(s) of one item; raise :class:`BadInput` to reject it."""
        raise NotImplementedError

    def process_batch(self, items: list[Any]) -> list[Outcome]:
        """One :class:`Outcome` per item (default: :meth:`process` on each, in order)."""
        return [self.process_one(item) for item in items]

    def process_one(self, item: Any) -> Outcome:
        """:meth:`process` under the error policy: :class:`BadInput` becomes a reject, the rest escapes."""
        image_id, path = self.identify(item)
        with item_context(self.name, image_id, path):
            try:
                rows = self.process(item)
            except BadInput as e:
                return Outcome(image_id, path, reject=str(e) or type(e).__name__)
        return Outcome(image_id, path, rows=[rows] if isinstance(rows, Mapping) else list(rows))

    def info(self) -> dict[str, Any]:
        """How the rows were made (backend, model, versions): stored in the stats."""
        return {}

    def table(self, rows: list[dict[str, Any]]) -> pd.DataFrame | list[dict[str, Any]]:
        """The output table from the kept rows (override to sort or add columns)."""
        return rows

    def finish(self, stats: Stats, rows: list[dict[str, Any]]) -> None:
        """Once every item is processed, before any output is written: extra outputs (contact sheets),
        extra stats, or a last check that fails the job."""

    def observe(self, outcome: Outcome, stats: Stats) -> None:
        """Per-outcome hook for stage counters (``stats.count``)."""

    def __enter__(self) -> ShardStage:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ShardOutputs:
    """The three files every shard job writes."""

    table: str | os.PathLike
    rejects: str | os.PathLike
    stats: str | os.PathLike


def run_shard(stage: ShardStage, shard: str, outputs: ShardOutputs) -> Stats:
    """Run ``stage`` over its shard; write the table, the rejects and the stats (atomically, stats last)."""
    stats = Stats(stage.name, shard)
    stage.shard = shard
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    with stage:
        for batch in stage.items():
            for outcome in stage.process_batch(batch):
                stats.n_in += 1
                stage.observe(outcome, stats)
                if outcome.reject is not None:
                    rejects.append(Reject(outcome.image_id, outcome.path, stage.name, outcome.reject))
                    stats.reject(outcome.reject)
                    log.info("%s/%s rejected %s (%s): %s", stage.name, shard, outcome.image_id,
                             outcome.path, outcome.reject)  # fmt: skip
                else:
                    stats.n_kept += 1
                    rows.extend(outcome.rows)
        stats.n_rows = len(rows)
        stats.info = stage.info()
        stage.finish(stats, rows)  # may still fail the job: nothing is written before it
        write_table(outputs.table, stage.table(rows), columns=list(stage.columns))
    write_rejects(outputs.rejects, rejects)
    stats.seconds = round(time.perf_counter() - t0, 3)
    stats.write(outputs.stats)
    log.info("%s/%s: %d in, %d kept, %d rejected %s", stage.name, shard, stats.n_in, stats.n_kept,
             stats.n_rejected, stats.reasons or "")  # fmt: skip
    return stats


def total(stats: Iterable[Stats]) -> dict[str, Stats]:
    """Per stage name, the sum of its stats."""
    out: dict[str, Stats] = {}
    for s in stats:
        out[s.stage] = out[s.stage] + s if s.stage in out else Stats.from_dict({**s.to_dict(), "shard": ""})
    return out


def gather(
    stats_paths: Sequence[str | os.PathLike],
    rejects_paths: Sequence[str | os.PathLike],
    stats_out: str | os.PathLike,
    rejects_out: str | os.PathLike,
) -> dict[str, Any]:
    """One summary and one rejects table from per-shard outputs of one or more stages.

    The summary has, per stage, the summed :class:`Stats` plus each shard's own; with a single stage its
    totals are also at the top level (``n_in``, ``n_kept``, ...).
    """
    per_shard = [Stats.read(p) for p in stats_paths]
    totals = total(per_shard)
    stages = {
        name: {**t.to_dict(), "shards": {s.shard: s.to_dict() for s in per_shard if s.stage == name}}
        for name, t in totals.items()
    }
    summary: dict[str, Any] = {"stages": stages}
    if len(stages) == 1:
        summary.update({k: v for k, v in next(iter(stages.values())).items() if k != "shards"})
    write_table(rejects_out, read_tables(rejects_paths, REJECT_COLUMNS), columns=REJECT_COLUMNS)
    write_json(stats_out, summary)
    return summary


def run_rule(job: Any, stage: ShardStage) -> Stats:
    """The adapter entry of a per-shard rule (``job`` is Snakemake's ``snakemake`` object).

    Applies the ``images`` params (format allow-list, pixel budget), takes the rule's GPU slots and runs
    the stage on ``{shard}`` into the rule's ``table``, ``rejects`` and ``stats`` outputs.
    """
    from relightflow.gpu_slots import gpu_slots
    from relightflow.images import configure

    configure(**dict(job.params.get("images") or {}))
    outputs = ShardOutputs(job.output.table, job.output.rejects, job.output.stats)
    with gpu_slots(job.resources.get("gpu", 0)):
        return run_shard(stage, job.wildcards.shard, outputs)
