"""`lipsyncd bench`: generate inputs, measure speed and memory, print a table, write JSON.

results = run_bench(BenchOptions(quick=True, only=("e2e",)))
print(format_table(results))
write_json(results, Path("bench/results/cpu-DATE.json"))
"""

from daemon.bench.core import BenchOptions, Check, Section, SectionResult, run_bench, section_names
from daemon.bench.report import format_table, write_json

__all__ = [
    "BenchOptions",
    "Check",
    "Section",
    "SectionResult",
    "format_table",
    "run_bench",
    "section_names",
    "write_json",
]
