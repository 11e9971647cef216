"""Prometheus text exposition (format 0.0.4) without a dependency.

Counters, gauges and histograms with plain ``int``/``float`` fields: code on a hot
path holds the object and does ``metric.value += 1``, nothing else. Rendering
happens at scrape time only. A family with ``labelnames`` holds one child per
combination of label values (``family.labels("1000")``, created on first use); a
hot path should keep the child, not look it up per event.

This is public API: applications build their own families from it and return
them from ``Handler.metrics()``; the server's own set lives in the private
``wsnet._server_metrics``.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from itertools import pairwise
from typing import ClassVar, Self

__all__ = ["CONTENT_TYPE", "Counter", "Gauge", "Histogram", "Metric", "Number", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

Number = int | float


def _format_value(value: Number) -> str:
    if isinstance(value, int):
        return str(int(value))  # int() turns a bool into 0/1
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class Metric:
    """One metric family: a name, a help text, and either its own value(s) or,
    with ``labelnames``, one child per combination of label values."""

    kind: ClassVar[str] = "untyped"
    __slots__ = ("name", "help", "labelnames", "_children")

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"repeated label name in {labelnames!r}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Self] = {}

    def labels(self, *values: object) -> Self:
        """The child for these label values (in ``labelnames`` order)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values!r}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._child()
        return child

    def _child(self) -> Self:
        raise NotImplementedError

    def _lines(self, name: str, labels: str) -> Iterator[str]:
        """Sample lines; ``labels`` is the rendered ``a="x",b="y"`` part or ""."""
        raise NotImplementedError

    def lines(self) -> Iterator[str]:
        """The family's exposition: HELP, TYPE, then every sample."""
        name = self.name
        yield f"# HELP {name} {_escape_help(self.help)}"
        yield f"# TYPE {name} {self.kind}"
        if not self.labelnames:
            yield from self._lines(name, "")
            return
        labelnames = self.labelnames
        for values, child in sorted(self._children.items()):
            labels = ",".join(
                f'{label}="{_escape_label_value(value)}"'
                for label, value in zip(labelnames, values, strict=True)
            )
            yield from child._lines(name, labels)


def _sample(name: str, labels: str, value: Number) -> str:
    if labels:
        return f"{name}{{{labels}}} {_format_value(value)}"
    return f"{name} {_format_value(value)}"


class Counter(Metric):
    """A value that only goes up (name it ``..._total``)."""

    kind = "counter"
    __slots__ = ("value",)

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self.value: Number = 0

    def inc(self, amount: Number = 1) -> None:
        if amount < 0:
            raise ValueError("a counter cannot go down")
        self.value += amount

    def _child(self) -> Self:
        return type(self)(self.name, self.help)

    def _lines(self, name: str, labels: str) -> Iterator[str]:
        yield _sample(name, labels, self.value)


class Gauge(Metric):
    """A value that goes up and down, or is set when scraped."""

    kind = "gauge"
    __slots__ = ("value",)

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self.value: Number = 0

    def set(self, value: Number) -> None:
        self.value = value

    def inc(self, amount: Number = 1) -> None:
        self.value += amount

    def dec(self, amount: Number = 1) -> None:
        self.value -= amount

    def _child(self) -> Self:
        return type(self)(self.name, self.help)

    def _lines(self, name: str, labels: str) -> Iterator[str]:
        yield _sample(name, labels, self.value)


class Histogram(Metric):
    """Observations counted into fixed buckets (upper bounds, inclusive), plus
    their sum. Counts are kept per bucket and made cumulative when rendered, so
    ``observe`` is one bisect and two increments."""

    kind = "histogram"
    __slots__ = ("bounds", "counts", "sum")

    def __init__(
        self,
        name: str,
        help: str,
        buckets: Iterable[Number],
        labelnames: Sequence[str] = (),
    ) -> None:
        if "le" in labelnames:
            raise ValueError("'le' is reserved for histogram buckets")
        super().__init__(name, help, labelnames)
        bounds = [float(b) for b in buckets]
        if bounds and math.isinf(bounds[-1]) and bounds[-1] > 0:
            bounds.pop()  # +Inf is always there
        if any(math.isnan(b) or math.isinf(b) for b in bounds):
            raise ValueError("bucket bounds must be finite")
        if any(a >= b for a, b in pairwise(bounds)):
            raise ValueError("bucket bounds must increase strictly")
        self.bounds: tuple[float, ...] = tuple(bounds)
        #: Observations per bucket, not cumulative; the last one is +Inf's.
        self.counts: list[int] = [0] * (len(bounds) + 1)
        self.sum: Number = 0

    def observe(self, value: Number) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def _child(self) -> Self:
        return type(self)(self.name, self.help, self.bounds)

    def _lines(self, name: str, labels: str) -> Iterator[str]:
        prefix = labels + "," if labels else ""
        bucket = name + "_bucket"
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            total += count
            yield _sample(bucket, f'{prefix}le="{_format_value(bound)}"', total)
        total += self.counts[-1]
        yield _sample(bucket, f'{prefix}le="+Inf"', total)
        yield _sample(name + "_sum", labels, self.sum)
        yield _sample(name + "_count", labels, total)


def render(families: Iterable[Metric]) -> bytes:
    """The text exposition of these families, in order.

    Raises ValueError if two families share a name: Prometheus would reject
    the whole scrape.
    """
    seen: set[str] = set()
    lines: list[str] = []
    for family in families:
        if family.name in seen:
            raise ValueError(f"metric family {family.name!r} appears twice")
        seen.add(family.name)
        lines.extend(family.lines())
    if not lines:
        return b""
    lines.append("")
    return "\n".join(lines).encode()
