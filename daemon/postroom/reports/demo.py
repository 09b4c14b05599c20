"""`python -m postroom.reports.demo OUTDIR [LOCALE]`: every report chart drawn from the worked
month of shared/specs/MRR.md (MRR 166,820 -> 187,800 cents) and plausible series around it, to
PNG files in OUTDIR with a greyscale copy of each (`*-grey.png`, luminance only) and the alt texts
in `alt.txt`, for looking at a chart after changing it."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np
from matplotlib import image

from postroom.reports.charts import (Chart, DeliveryPoint, PeriodMovements, delivery_health, movements_waterfall,
                                     mrr_sparkline, product_trend)  # fmt: skip

WORKED_MONTH = PeriodMovements("Feb 2026", new=25_000, expansion=9_800, reactivation=15_000, contraction=6_000,
                               churn=23_000, fx=180)  # fmt: skip
_MRR_WEEKS = (166_820, 168_300, 167_950, 171_200, 173_800, 172_900, 176_400, 179_100, 181_000, 180_200, 184_600,
              187_800)  # fmt: skip
_MONTHS = ("Mar 2025", "Apr 2025", "May 2025", "Jun 2025", "Jul 2025", "Aug 2025", "Sep 2025", "Oct 2025",
           "Nov 2025", "Dec 2025", "Jan 2026", "Feb 2026")  # fmt: skip


def demo_months() -> list[PeriodMovements]:
    """Twelve months of movements ending with the worked month."""
    return [PeriodMovements(name, new=12_000 + 1_100 * i, expansion=4_000 + (i % 4) * 1_500,
                            reactivation=(i % 3) * 2_500, contraction=2_000 + (i % 5) * 900,
                            churn=6_000 + (i % 4) * 2_800, fx=(-120 if i % 2 else 90))
            for i, name in enumerate(_MONTHS[:-1])] + [WORKED_MONTH]  # fmt: skip


def demo_charts(locale: str = "en_US") -> dict[str, Chart]:
    start = dt.date(2025, 12, 1)
    weeks = [start + dt.timedelta(weeks=i) for i in range(12)]
    months = demo_months()
    days = [dt.date(2026, 2, 1) + dt.timedelta(days=i) for i in range(14)]
    delivery = [DeliveryPoint(day, sent=1_200 + 90 * (i % 5), delivered=1_150 + 85 * (i % 5),
                              bounced=18 + (40 if i == 9 else 0) + i % 3, complained=1 if i in (3, 9) else 0)
                for i, day in enumerate(days)]  # fmt: skip
    return {
        "mrr-sparkline": mrr_sparkline(list(zip(weeks, _MRR_WEEKS)), "USD", locale),
        "movements-week": movements_waterfall([WORKED_MONTH], "USD", locale),
        "movements-12": movements_waterfall(months, "USD", locale),
        "wau": product_trend([(w, 1_204 + 31 * i + (i % 3) * 12) for i, w in enumerate(weeks)], "Weekly active users",
                             locale),  # fmt: skip
        "delivery": delivery_health(delivery, locale),
        "empty": movements_waterfall([], "USD", locale),
    }


def write_demo(directory: Path, locale: str = "en_US") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    alts = []
    for name, chart in demo_charts(locale).items():
        path = directory / f"{name}.png"
        path.write_bytes(chart.png)
        rgb = image.imread(path)[..., :3]
        grey = rgb @ np.array([0.2126, 0.7152, 0.0722])
        image.imsave(directory / f"{name}-grey.png", grey, cmap="gray", vmin=0, vmax=1)
        alts.append(f"{name}: {chart.alt}")
    (directory / "alt.txt").write_text("\n".join(alts) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_demo(Path(sys.argv[1]), *sys.argv[2:3])
