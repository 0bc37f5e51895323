"""What ``fmmkit verify`` reports: one row per law, the worst time triple, and defect growth with |t - s|.

Every law row holds the RMS of its residual over the evaluation points (``rms``), the RMS of the
quantity that sets its scale (``scale``: the displacement X_{s,t}(x) - x for map laws, the velocity
for differential laws, |x| for the identity), and ``relative = rms / scale``, which the threshold
applies to. ``status`` is "pass", "FAIL" or "skip" (a law that does not apply, with a note).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, SKIP = "pass", "FAIL", "skip"


@dataclass
class LawResult:
    """One measured law."""

    name: str
    description: str
    rms: float
    scale: float
    threshold: float | None
    status: str
    note: str = ""
    where: dict[str, float] = field(default_factory=dict)

    @property
    def relative(self) -> float:
        """rms / scale (rms itself when the scale is 0)."""
        return self.rms / self.scale if self.scale > 0 else self.rms


@dataclass
class GrowthRow:
    """Defects (absolute RMS) of pairs whose gap |t - s| lies in [lo, hi)."""

    lo: float
    hi: float
    mean_gap: float
    defects: dict[str, float]


@dataclass
class Report:
    """A whole verification: law rows, the defect-growth table and its fitted exponents."""

    laws: list[LawResult]
    growth: list[GrowthRow] = field(default_factory=list)
    growth_exponents: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no law failed its threshold."""
        return all(law.status != FAIL for law in self.laws)

    @property
    def failed(self) -> list[str]:
        """Names of the laws that failed."""
        return [law.name for law in self.laws if law.status == FAIL]

    def law(self, name: str) -> LawResult:
        """The row of one law (KeyError if it was not measured)."""
        for law in self.laws:
            if law.name == name:
                return law
        raise KeyError(f"no law '{name}' in this report; measured: {', '.join(l.name for l in self.laws)}")

    def to_dict(self) -> dict[str, Any]:
        """The report as plain values (a skipped law's NaN stays a float; :meth:`to_json` writes null)."""
        laws = [{**asdict(law), "relative": law.relative} for law in self.laws]
        return {"source": self.source, "passed": self.passed, "failed": self.failed, "settings": self.settings,
                "laws": laws, "growth": [asdict(row) for row in self.growth],
                "growth_exponents": self.growth_exponents, "notes": self.notes}

    def to_json(self) -> str:
        """The report as indented standard JSON: non-finite numbers are null, listed in ``"nonfinite"``."""
        from fmmkit.runs.files import json_text

        return json_text(self.to_dict(), indent=2)


def _num(x: float) -> str:
    return f"{x:.3e}" if math.isfinite(x) else str(x)


def _columns(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)]


def format_report(report: Report) -> str:
    """The law table, the worst-case notes, the growth table and a one-line verdict."""
    header = ["law", "rms", "scale", "relative", "threshold", "status"]
    body = [[law.name, _num(law.rms), _num(law.scale), _num(law.relative),
             "-" if law.threshold is None else f"{law.threshold:g}", law.status] for law in report.laws]
    lines = [f"flow-map laws of {report.source}" if report.source else "flow-map laws", *_columns(header, body)]
    for law in report.laws:
        if law.where and (law.status == FAIL or law.name.endswith("_worst")):
            at = ", ".join(f"{k} = {v:.6g}" for k, v in law.where.items())
            lines.append(f"  {law.name}: worst at {at}")
        if law.note:
            lines.append(f"  {law.name}: {law.note}")
    if report.growth:
        names = list(report.growth[0].defects)
        lines += ["", "defect growth with |t - s| (absolute RMS):"]
        rows = [[f"[{r.lo:.2f}, {r.hi:.2f})", f"{r.mean_gap:.3f}", *(_num(r.defects[n]) for n in names)]
                for r in report.growth]
        lines += _columns(["|t - s|", "mean", *names], rows)
        if report.growth_exponents:
            fits = ", ".join(f"{k} ~ |t - s|^{v:.2f}" for k, v in report.growth_exponents.items())
            lines.append(f"  fitted: {fits}")
    lines += [f"note: {note}" for note in report.notes]
    verdict = "all laws hold" if report.passed else f"FAILED: {', '.join(report.failed)}"
    lines += ["", f"verdict: {verdict}"]
    return "\n".join(lines)
