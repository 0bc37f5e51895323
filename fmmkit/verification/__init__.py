"""Checking the flow-map laws: residuals (:mod:`.laws`), the adversarial time search (:mod:`.search`),
and the measurement of a whole model or run behind ``fmmkit verify`` (:mod:`.verify`)."""

from fmmkit.verification.laws import (
    LAW_NAMES,
    eulerian_residual,
    identity_defect,
    inverse_defect,
    lagrangian_residual,
    per_point_rms,
    rms,
    semigroup_defect,
    tangent_defect,
)
from fmmkit.verification.report import GrowthRow, LawResult, Report, format_report
from fmmkit.verification.search import WorstCase, worst_triple
from fmmkit.verification.verify import (
    DEFAULT_THRESHOLDS,
    Marginal,
    TimeDomain,
    VerifyError,
    VerifySettings,
    parse_thresholds,
    verify_flow_map,
    verify_run,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "LAW_NAMES",
    "GrowthRow",
    "LawResult",
    "Marginal",
    "Report",
    "TimeDomain",
    "VerifyError",
    "VerifySettings",
    "WorstCase",
    "eulerian_residual",
    "format_report",
    "identity_defect",
    "inverse_defect",
    "lagrangian_residual",
    "parse_thresholds",
    "per_point_rms",
    "rms",
    "semigroup_defect",
    "tangent_defect",
    "verify_flow_map",
    "verify_run",
    "worst_triple",
]
