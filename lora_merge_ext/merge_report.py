"""Per-module merge report: output rank and ‖ΔW_out − T‖/‖T‖, with a summary."""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class ReportRow:
    module: str
    rank: int
    error: float | None  # None when the merge was not measured


@dataclass
class MergeReport:
    mode: str
    rows: list[ReportRow] = field(default_factory=list)
    measured: bool = True

    def summary(self, worst: int = 5) -> dict:
        """Mean and max relative error, and the worst modules."""
        if not self.measured:
            return {"mode": self.mode, "modules": len(self.rows), "cancelled": 0, "mean_error": None, "max_error": None,
                    "worst": []}
        errors = [r.error for r in self.rows if math.isfinite(r.error)]
        ranked = sorted(self.rows, key=lambda r: -r.error)[:worst]
        return {
            "mode": self.mode,
            "modules": len(self.rows),
            # infinite: the target is 0 (the inputs cancel) and the result is not; kept out of the mean
            "cancelled": len(self.rows) - len(errors),
            "mean_error": sum(errors) / len(errors) if errors else (math.inf if self.rows else 0.0),
            "max_error": max((r.error for r in self.rows), default=0.0),
            "worst": [(r.module, r.rank, r.error) for r in ranked],
        }

    def format(self, worst: int = 5) -> str:
        """A short human-readable summary."""
        s = self.summary(worst)
        head = f"{s['modules']} modules{self._rank_text()}, {self.mode}"
        if not self.measured:
            return f"{head}: exact by construction (error not measured; ask for a report)"
        lines = [f"{head}: relative error mean {s['mean_error']:.3g}, max {s['max_error']:.3g}"]
        if s["cancelled"]:
            lines[0] += (f" ({s['cancelled']} modules where the weighted inputs cancel to 0 and the result does not: "
                         "infinite, left out of the mean)")
        if s["max_error"] > 1e-5:
            lines += [f"  {err:.3g}  rank {rank:<4} {module}" for module, rank, err in s["worst"]]
        return "\n".join(lines)

    def _rank_text(self) -> str:
        """' at rank 8', or ' at ranks 4–8' when modules differ ('' for no rows)."""
        ranks = sorted({r.rank for r in self.rows})
        if not ranks:
            return ""
        return f" at rank {ranks[0]}" if len(ranks) == 1 else f" at ranks {ranks[0]}–{ranks[-1]}"
