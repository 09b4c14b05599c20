"""The drawing surface every report chart shares: a matplotlib `Figure` on its own Agg canvas
(never pyplot, so no figure is registered anywhere and nothing stays open after a render), the
palette, the house look and the deterministic PNG. No rcParams are read or changed for the look:
fonts and colours are passed to each artist, so renders in a thread pool do not race on global
state and a site matplotlibrc cannot change a report.

Mail clients in dark mode invert or darken what they think is a light page; a chart keeps an
opaque white background with a thin grey border so it reads as a picture. The palette is
Okabe-Ito (safe for the common colour-vision deficiencies) chosen so that neighbours differ in
lightness too, and losses are hatched, so a greyscale print still tells the series apart."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont, get_font

# Rendered at twice the CSS size so the image is sharp on high-density screens.
SCALE = 2
DPI = 100 * SCALE
FONT = "DejaVu Sans"  # bundled with matplotlib: the same glyphs on every host

INK = "#222222"
MUTED = "#666666"
GRID = "#E3E3E3"
BORDER = "#BBBBBB"
BACKGROUND = "#FFFFFF"

# Okabe-Ito; relative luminance in brackets, so greyscale keeps neighbours apart.
BLUE = "#0072B2"  # (0.16) new, primary line
SKY = "#56B4E9"  # (0.40) expansion: lighter than its neighbours on both sides
GREEN = "#009E73"  # (0.26) reactivation, product lines
YELLOW = "#F0E442"  # (0.76) FX
ORANGE = "#E69F00"  # (0.44) contraction
VERMILLION = "#D55E00"  # (0.23) churn, bounces
PURPLE = "#CC79A7"  # (0.30) complaints
LIGHT_GREY = "#D9D9D9"  # sent (background bars)


@dataclass(frozen=True)
class Chart:
    """A rendered chart for an HTML part: `<img src="cid:{content_id}" alt="{alt}" width height>`.
    `width` and `height` are CSS pixels; `png` is drawn at `SCALE` times that."""

    content_id: str
    png: bytes
    alt: str
    width: int
    height: int


def new_figure(width: int, height: int) -> Figure:
    """A figure of `width` x `height` CSS pixels with its own Agg canvas."""
    figure = Figure(figsize=(width / 100, height / 100), dpi=DPI, facecolor=BACKGROUND, edgecolor=BORDER,
                    linewidth=1.0, layout="constrained")  # fmt: skip
    FigureCanvasAgg(figure)
    return figure


def style_axes(axes: Axes, *, grid: bool = True) -> None:
    """Light grid under the data, no top or right frame, small muted tick labels in `FONT`."""
    axes.set_facecolor(BACKGROUND)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        axes.spines[side].set_color(BORDER)
    axes.tick_params(colors=MUTED, labelsize=7.5, labelfontfamily=FONT, length=2)
    if grid:
        axes.grid(axis="y", color=GRID, linewidth=0.6)


def text(**extra: Any) -> dict[str, Any]:
    """Keyword arguments for a text artist in the house font."""
    # parse_math off: "$1K to $2K" is money, not TeX.
    return {"fontfamily": FONT, "color": INK, "fontsize": 8, "parse_math": False} | extra


def drawable(words: str) -> bool:
    """Whether `FONT` has a glyph for every character of `words`. DejaVu has Latin, Greek,
    Cyrillic and the common currency signs, not CJK ("2月2日", "16.7万") nor Devanagari, and
    matplotlib draws a missing glyph as an empty box."""
    charmap = get_font(findfont(FontProperties(family=FONT))).get_charmap()
    return all(ord(character) in charmap for character in words if not character.isspace())


def title(figure: Figure, words: str) -> None:
    figure.suptitle(words, x=0.01, ha="left", **text(fontsize=9, fontweight="bold"))


def no_data(figure: Figure, heading: str) -> None:
    """An empty chart says so instead of drawing empty axes."""
    title(figure, heading)
    figure.text(0.5, 0.45, "No data for this period", ha="center", va="center", **text(color=MUTED, fontsize=9))


def render(figure: Figure, content_id: str, alt: str, width: int, height: int) -> Chart:
    """The PNG of `figure`, byte-for-byte the same for the same input: no Software or date
    chunks (PNG tEXt is the only metadata Agg writes). The figure is then cleared so its artists
    can be collected at once even while the caller still holds it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor=BACKGROUND, edgecolor=BORDER,
                   metadata={"Software": None})  # fmt: skip
    figure.clear()
    return Chart(content_id=content_id, png=buffer.getvalue(), alt=alt, width=width, height=height)
