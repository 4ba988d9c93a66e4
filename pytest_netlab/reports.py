"""Reports: the JSON report, Gradescope's results.json, and the terminal score table.

Results arrive as plain dicts attached to pytest reports (``report.netlab``),
so they travel from xdist workers to the controller unchanged; this module
gathers them per target, scores them, and writes them out. Scoring: a check
earns its points when it passes; unmet SHOULDs, failures and expected
failures earn nothing; skipped checks and harness errors count in neither the
score nor the maximum (they say nothing about the target).

This module must not run checks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

__all__ = ["CheckResult", "TargetScore", "Scoreboard", "result_from_item"]

REPORT_VERSION = 1


@dataclass
class CheckResult:
    """One check's result against one target, as the reports show it."""

    target: str
    check: str
    title: str
    severity: str
    outcome: str  # passed failed unmet observed skipped error xfailed xpassed
    points_possible: float
    message: str = ""
    duration: float = 0.0
    check_time: float = 0.0
    artifacts: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> bool:
        """True when the result counts toward the score."""
        return self.outcome not in ("skipped", "error")

    @property
    def points_earned(self) -> float:
        return self.points_possible if self.outcome in ("passed", "observed") else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.check,
            "title": self.title,
            "severity": self.severity,
            "outcome": self.outcome,
            "points_earned": self.points_earned if self.counts else 0.0,
            "points_possible": self.points_possible if self.counts else 0.0,
            "message": self.message,
            "duration": round(self.duration, 4),
            "check_time": round(self.check_time, 4),
            "artifacts": self.artifacts,
        }


def result_from_item(target: str, check: str, title: str, severity: str, points: float) -> dict[str, Any]:
    """The skeleton dict an item attaches to its report (filled in by the plugin)."""
    return {"target": target, "check": check, "title": title, "severity": severity, "points_possible": points}


@dataclass
class TargetScore:
    """All results of one target."""

    target: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def earned(self) -> float:
        return sum(r.points_earned for r in self.results if r.counts)

    @property
    def possible(self) -> float:
        return sum(r.points_possible for r in self.results if r.counts)

    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
        return counts

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "score": round(self.earned, 3),
            "max_score": round(self.possible, 3),
            "outcomes": self.outcomes(),
            "checks": [r.as_dict() for r in self.results],
        }


class Scoreboard:
    """Collects results from every worker and writes the reports."""

    def __init__(self) -> None:
        self.targets: dict[str, TargetScore] = {}

    def add(self, data: dict[str, Any]) -> None:
        result = CheckResult(**{k: data[k] for k in CheckResult.__dataclass_fields__ if k in data})
        self.targets.setdefault(result.target, TargetScore(result.target)).results.append(result)

    def sorted_targets(self) -> list[TargetScore]:
        """Targets by name, checks by id: the same order whatever order xdist reported them in."""
        for score in self.targets.values():
            score.results.sort(key=lambda r: r.check)
        return [self.targets[name] for name in sorted(self.targets)]

    def write_json(self, path: Path, *, seed: int, settings: dict[str, Any]) -> None:
        document = {
            "version": REPORT_VERSION,
            "seed": seed,
            "settings": settings,
            "targets": [score.as_dict() for score in self.sorted_targets()],
        }
        _write(path, json.dumps(document, indent=2) + "\n")

    def write_gradescope(self, path_template: str) -> list[Path]:
        """Gradescope ``results.json``: one file, or one per target with ``{target}`` in the path."""
        targets = self.sorted_targets()
        written = []
        if "{target}" in path_template:
            for score in targets:
                path = Path(path_template.replace("{target}", _file_safe(score.target)))
                _write(path, json.dumps(_gradescope(score.results, prefix=False), indent=2) + "\n")
                written.append(path)
        else:
            results = [r for score in targets for r in score.results]
            path = Path(path_template)
            _write(path, json.dumps(_gradescope(results, prefix=len(targets) > 1), indent=2) + "\n")
            written.append(path)
        return written

    def write_gradebook(self, path: Path) -> None:
        """One row per target, one column per check group (``suite/group``), then the total.

        CSV cells hold the points earned (the header says the most a group
        is worth); Markdown cells read ``earned/possible``.
        """
        targets = self.sorted_targets()
        groups = sorted({r.check.rsplit("/", 1)[0] for score in targets for r in score.results})

        def group_points(score: TargetScore, group: str) -> tuple[float, float]:
            counted = [r for r in score.results if r.check.rsplit("/", 1)[0] == group and r.counts]
            return sum(r.points_earned for r in counted), sum(r.points_possible for r in counted)

        if path.suffix == ".csv":
            import csv
            import io

            buffer = io.StringIO()
            writer = csv.writer(buffer)
            maxima = {g: max((group_points(s, g)[1] for s in targets), default=0.0) for g in groups}
            writer.writerow(["target", *[f"{g} (of {maxima[g]:g})" for g in groups], "total", "max", "failed checks"])
            for score in targets:
                failed = " ".join(r.check for r in score.results if r.outcome in ("failed", "unmet", "xpassed"))
                writer.writerow([score.target, *[f"{group_points(score, g)[0]:g}" for g in groups], f"{score.earned:g}", f"{score.possible:g}", failed])
            _write(path, buffer.getvalue())
            return
        lines = [
            "| target | " + " | ".join(groups) + " | total |",
            "|---|" + "---|" * len(groups) + "---|",
        ]
        for score in targets:
            cells = ["%g/%g" % group_points(score, g) for g in groups]
            lines.append(f"| {score.target} | " + " | ".join(cells) + f" | **{score.earned:g}/{score.possible:g}** |")
        _write(path, "\n".join(lines) + "\n")

    def summary_lines(self, width: int = 100) -> list[str]:
        """The terminal table: each target's score, then its failed and unmet checks."""
        lines = []
        targets = self.sorted_targets()
        name_width = min(max((len(s.target) for s in targets), default=10), 40)
        for score in targets:
            counts = score.outcomes()
            parts = [f"{n} {_OUTCOME_WORDS.get(k, k)}" for k, n in sorted(counts.items(), key=lambda kv: _ORDER.index(kv[0]) if kv[0] in _ORDER else 99)]
            lines.append(f"{score.target:<{name_width}}  {score.earned:g}/{score.possible:g} points  ({', '.join(parts)})")
            for result in score.results:
                if result.outcome in ("failed", "unmet", "error", "xpassed"):
                    label = {"failed": "FAILED", "unmet": "SHOULD", "error": "ERROR", "xpassed": "XPASS"}[result.outcome]
                    lines.append(f"    {label:<6} {result.check}: {result.title}"[:width])
        return lines


_ORDER = ["passed", "failed", "unmet", "observed", "xfailed", "xpassed", "skipped", "error"]
_OUTCOME_WORDS = {"unmet": "SHOULD unmet", "observed": "observed", "xfailed": "expected failures", "xpassed": "unexpected passes"}


def _gradescope(results: Iterable[CheckResult], *, prefix: bool) -> dict[str, Any]:
    tests = []
    score = maximum = 0.0
    for result in results:
        if result.outcome == "skipped":
            continue
        name = f"{result.target}: {result.check}" if prefix else result.check
        tests.append(
            {
                "name": f"{name} ({result.severity}): {result.title}",
                "score": result.points_earned if result.counts else 0.0,
                "max_score": result.points_possible if result.counts else 0.0,
                "status": "passed" if result.outcome in ("passed", "observed") else "failed",
                "output": result.message,
                "visibility": "visible",
            }
        )
        if result.counts:
            score += result.points_earned
            maximum += result.points_possible
    return {"score": score, "max_score": maximum, "tests": tests}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
