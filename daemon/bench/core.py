"""The benchmark's frame: options, sections, and the run that strings them together.

A section is a function from a `BenchContext` to a `SectionResult` (rows for the table, checks against
the targets, notes). `SECTIONS` lists the built-in ones in order; callers may pass more (upload speed,
drop-to-link latency) to `run_bench`.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from daemon.bench.inputs import Inputs
from daemon.bench.machine import describe_machine
from daemon.render.pipeline import RenderSettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class BenchOptions:
    quick: bool = False  # small inputs: proves the command works, measures little
    only: tuple[str, ...] = ()  # section names; empty: all
    work_dir: Path = Path("bench/out")  # generated inputs, models and renders (git-ignored)
    settings: RenderSettings = RenderSettings()
    threads: int = 0  # onnxruntime intra-op threads, as render.threads (0: its choice)
    quiet_wait: float = 60.0  # seconds to wait for other processes to leave the CPU before each run
    repeats: int = 1  # speed runs per figure; the fastest counts (the one least disturbed by others)
    against: str | None = None  # the `paired` section's reference commit (None: its built-in one)


@dataclass(frozen=True)
class Check:
    what: str  # "end-to-end / model-only at 256x256"
    target: str  # ">= 80%"
    value: str  # "91%"
    met: bool


@dataclass(frozen=True)
class SectionResult:
    rows: list[dict[str, Any]]
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BenchContext:
    options: BenchOptions
    inputs: Inputs

    @property
    def quick(self) -> bool:
        return self.options.quick


SectionFn = Callable[[BenchContext], SectionResult]


@dataclass(frozen=True)
class Section:
    name: str  # what --only takes
    title: str
    run: SectionFn


def run_bench(options: BenchOptions, sections: Sequence[Section] | None = None) -> dict[str, Any]:
    """Run the chosen sections in order; a failing section is recorded and the others still run."""
    from daemon.bench.sections import SECTIONS  # sections import this module's types

    chosen = _choose(list(SECTIONS if sections is None else sections), options.only)
    context = BenchContext(options, Inputs(options.work_dir / "inputs"))
    started = datetime.datetime.now(datetime.UTC)
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "options": _options_dict(options),
        "sections": [_run_section(section, context) for section in chosen],
    }


def section_names(sections: Sequence[Section] | None = None) -> list[str]:
    from daemon.bench.sections import SECTIONS

    return [s.name for s in (SECTIONS if sections is None else sections)]


def _choose(sections: list[Section], only: tuple[str, ...]) -> list[Section]:
    known = {s.name for s in sections}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ValueError(
            f"unknown bench section {', '.join(unknown)}; choose from {', '.join(sorted(known))}"
        )
    return [s for s in sections if not only or s.name in only]


def _run_section(section: Section, context: BenchContext) -> dict[str, Any]:
    log.info("bench_section", section=section.name, quick=context.quick)
    started = time.monotonic()
    entry: dict[str, Any] = {"name": section.name, "title": section.title}
    try:
        entry.update(asdict(section.run(context)))
    except Exception as exc:  # one broken section must not lose the others' figures (logged)
        log.exception("bench_section_failed", section=section.name)
        entry.update(rows=[], checks=[], notes=[], error=f"{type(exc).__name__}: {exc}")
    entry["seconds"] = round(time.monotonic() - started, 1)
    return entry


def _options_dict(options: BenchOptions) -> dict[str, Any]:
    out = asdict(options)
    out["work_dir"] = str(options.work_dir)
    out["only"] = list(options.only)
    return out
