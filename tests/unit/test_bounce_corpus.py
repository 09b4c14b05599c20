"""`parse_bounce` measured against the labelled corpora in shared/data (README's scoring rules).

bounces/: 296 real bounces, feedback reports and auto-replies labelled by Sisimai. Rows are matched
on the lower-cased recipient; recall and precision count recipients; class, reason and status
accuracy are over matched rows; status is not scored where the reference invented a pseudo code
(X.0.9NN, X.9.NNN). bounces-flufl/: addresses only; the figure is the recall of the permanent
(hard failure) addresses. The bars are the project's; a figure under its bar fails the test.
Run with -s (or -rP) to see the figures and the most frequent reason confusions.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from postroom.bounces.model import BounceClass
from postroom.bounces.parser import parse_bounce

_PSEUDO_STATUS = re.compile(r"^\d\.(0\.9\d\d|9\.\d+)$")

BARS = {"recall": 0.98, "precision": 0.98, "class": 0.97, "reason": 0.90, "flufl": 0.95}


def _data_root() -> Path:
    root = os.environ.get("POSTROOM_TEST_DATA")
    return Path(root) if root else Path(__file__).resolve().parents[3] / "shared" / "data"


def _corpus(name: str) -> tuple[Path, list[dict[str, Any]]]:
    expected = _data_root() / name / "expected.json"
    if not expected.is_file():
        pytest.skip(f"labelled corpus not found at {expected} (set POSTROOM_TEST_DATA)")
    return expected.parent / "eml", json.loads(expected.read_text())["files"]


@dataclass
class Score:
    """Counts over the labelled corpus, and what was confused with what."""

    matched: int = 0
    missed: int = 0
    extra: int = 0
    class_right: int = 0
    reason_right: int = 0
    status_scored: int = 0
    status_right: int = 0
    confusions: Counter[tuple[str, str]] = field(default_factory=Counter)

    def figure(self, name: str) -> float:
        return {
            "recall": self.matched / max(1, self.matched + self.missed),
            "precision": self.matched / max(1, self.matched + self.extra),
            "class": self.class_right / max(1, self.matched),
            "reason": self.reason_right / max(1, self.matched),
            "status": self.status_right / max(1, self.status_scored),
        }[name]


def score_file(score: Score, expected_rows: list[dict[str, Any]], predicted: dict[str, Any]) -> None:
    """Add one file's rows to `score` (`predicted`: lower-cased address -> BounceRecipient)."""
    expected = {row["recipient"].lower(): row for row in expected_rows}
    for address, row in expected.items():
        got = predicted.get(address)
        if got is None:
            score.missed += 1
            continue
        score.matched += 1
        score.class_right += got.bounce_class.value == row["bounce_class"]
        score.reason_right += got.reason == row["reason"]
        if got.reason != row["reason"]:
            score.confusions[(row["reason"], got.reason)] += 1
        if row["status"] and not _PSEUDO_STATUS.match(row["status"]):
            score.status_scored += 1
            score.status_right += got.status == row["status"]
    score.extra += sum(1 for address in predicted if address not in expected)


def test_the_labelled_bounce_corpus_meets_the_bars(caplog: pytest.LogCaptureFixture) -> None:
    eml, files = _corpus("bounces")
    score = Score()
    with caplog.at_level(logging.ERROR, logger="postroom.bounces"):
        for entry in files:
            parsed = parse_bounce((eml / entry["file"]).read_bytes())
            score_file(score, entry["recipients"], {r.address.lower(): r for r in parsed.recipients})
    # parse_bounce turns an internal exception into a logged NOT_BOUNCE: none may have happened.
    assert [r.getMessage() for r in caplog.records] == []
    figures = {name: score.figure(name) for name in ("recall", "precision", "class", "reason", "status")}
    print(
        f"\nbounce corpus: {len(files)} files, {score.matched + score.missed} labelled recipients, "
        f"{score.matched} matched, {score.missed} missed, {score.extra} extra\n"
        + "".join(f"  {name:<9} {value:6.1%}\n" for name, value in figures.items())
        + f"  (status scored on {score.status_scored} rows with a real code)\n"
        + "  most frequent reason confusions (expected -> predicted): "
        + ", ".join(f"{e}->{p} x{n}" for (e, p), n in score.confusions.most_common(8))
    )
    assert score.matched + score.missed >= 300  # the corpus was read, not silently emptied
    for name in ("recall", "precision", "class", "reason"):
        assert figures[name] >= BARS[name], f"{name} {figures[name]:.1%} is under its bar {BARS[name]:.0%}"


def test_the_flufl_corpus_permanent_addresses_are_found(caplog: pytest.LogCaptureFixture) -> None:
    eml, files = _corpus("bounces-flufl")
    found = total = 0
    with caplog.at_level(logging.ERROR, logger="postroom.bounces"):
        for entry in files:
            parsed = parse_bounce((eml / entry["file"]).read_bytes())
            addresses = {r.address.lower() for r in parsed.recipients}
            total += len(entry["permanent"])
            found += sum(1 for address in entry["permanent"] if address.lower() in addresses)
    assert [r.getMessage() for r in caplog.records] == []
    recall = found / total
    print(f"\nflufl corpus: {len(files)} files, permanent-address recall {found}/{total} ({recall:.1%})")
    assert total >= 50
    assert recall >= BARS["flufl"], f"flufl recall {recall:.1%} is under its bar {BARS['flufl']:.0%}"


class _Row:
    def __init__(self, address: str, reason: str, bounce_class: str, status: str | None) -> None:
        self.address, self.reason, self.status = address, reason, status
        self.bounce_class = BounceClass(bounce_class)


def test_the_scoring_counts_misses_extras_and_pseudo_statuses_as_the_readme_says() -> None:
    """The scorer itself: a wrong reason, a missed and an extra recipient, a pseudo status."""
    score = Score()
    expected = [
        {"recipient": "A@x.org", "reason": "userunknown", "bounce_class": "hard", "status": "5.1.1"},
        {"recipient": "b@x.org", "reason": "expired", "bounce_class": "soft", "status": "5.0.947"},
        {"recipient": "c@x.org", "reason": "blocked", "bounce_class": "soft", "status": ""},
    ]
    predicted: dict[str, Any] = {
        "a@x.org": _Row("a@x.org", "userunknown", "hard", "5.1.1"),
        "b@x.org": _Row("b@x.org", "networkerror", "soft", None),
        "d@x.org": _Row("d@x.org", "blocked", "soft", None),
    }
    score_file(score, expected, predicted)
    assert (score.matched, score.missed, score.extra) == (2, 1, 1)
    assert (score.class_right, score.reason_right) == (2, 1)
    assert (score.status_scored, score.status_right) == (1, 1)  # 5.0.947 is the reference's invention
    assert score.confusions == Counter({("expired", "networkerror"): 1})
