"""The frontier's claims, as bench/RESULTS.md states them, are checked from the replays' figures:
a claim reads met only when the figures say so."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from frontier import Point, chart, cheapest_within, claims, section  # noqa: E402


def row(cost: float, p50: float, p95: float) -> dict:
    return {"cost_vs_lower_bound": cost, "wait_p50_s": p50, "wait_p95_s": p95}


ROWS = {"reactive": row(1.30, 0, 70), "consolidating": row(1.20, 60, 200),
        "static-peak": row(4.0, 0, 0), "static-p95": row(2.5, 0, 480)}
CURVE = {0.0: Point("dpe", 1.29, 0, 65), 10.0: Point("dpe", 1.25, 0, 71), 120.0: Point("dpe", 1.15, 0, 120),
         300.0: Point("dpe", 1.10, 30, 250)}


def verdicts(curve: dict, bursty: bool = False, clairvoyant: float = 1.0) -> dict[str, bool]:
    models = {name: Point.of(name, ROWS[name]) for name in ("reactive", "consolidating")}
    return {claim: met for claim, met, _ in claims(curve, 10.0, models, clairvoyant, bursty)}


def test_a_model_is_matched_by_the_cheapest_target_within_its_wait_plus_one_second():
    assert cheapest_within(CURVE, 70) == (10.0, CURVE[10.0])  # 71 s is within 70 + 1
    assert cheapest_within(CURVE, 200) == (120.0, CURVE[120.0])  # 300 s waits too long
    assert cheapest_within(CURVE, 10) is None


def test_the_claims_are_met_or_not_by_the_figures():
    met = verdicts(CURVE)
    assert all(met.values()) and len(met) == 3
    dearer = {**CURVE, 10.0: Point("dpe", 1.31, 0, 71), 0.0: Point("dpe", 1.35, 0, 60)}
    met = verdicts(dearer)
    assert [claim for claim, ok in met.items() if not ok] == [
        "some target: cost <= Cluster Autoscaler's at p95 <= its + 1 s",
        "the default (W = 10 s): cost <= Cluster Autoscaler's at p95 <= its + 1 s"]
    # on bursty work, dpe at Karpenter's wait (W = 120 s, 1.15) against 1.3x the clairvoyant pool
    assert verdicts(CURVE, bursty=True, clairvoyant=0.9)["at Karpenter's wait: cost <= 1.3x the clairvoyant pool's"]
    assert not verdicts(CURVE, bursty=True, clairvoyant=0.8)["at Karpenter's wait: cost <= 1.3x the clairvoyant pool's"]


def test_the_section_lists_every_point_and_the_chart_is_drawn(tmp_path):
    lines = section("w", CURVE, 10.0, ROWS, 1.05, "frontier_w.png", bursty=False)
    assert "| dpe, W = 10 s (default) | 1.250 | 0 | 71 |" in lines
    assert any(line.startswith("| reactive (Cluster Autoscaler) | 1.300 |") for line in lines)
    assert "| clairvoyant | 1.050 | 0 | 0 |" in lines
    png = tmp_path / "frontier_w.png"
    chart(png, "w", CURVE, 10.0, ROWS, 1.05)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
