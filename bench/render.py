"""Template renders per second on one core: a realistic ~10 KB message (the shipped base layout and
footer partial, a template with a 20-item loop, a JSON Schema with nested objects), each render
validating the data, rendering subject, HTML and text, and inlining the CSS, from a version
compiled once (as the daemon caches it). Also the cold compile time of that version.

    .venv/bin/python bench/render.py [--seconds 3] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from postroom.templates.bundle import read_bundle
from postroom.templates.compiler import CompiledTemplate
from postroom.templates.model import TemplateKind, TemplateSource, TemplateVersion

ROOT = Path(__file__).resolve().parent.parent

HTML = """<h1>Your weekly order summary, {{ customer.first_name }}</h1>
<p>Here is everything that happened on your {{ company_name }} account between {{ period.start }} and
{{ period.end }}. Orders are listed newest first; amounts include tax.</p>
<table class="items">
{% for order in orders %}
  <tr>
    <td><strong>{{ order.number }}</strong> &middot; {{ order.placed_on }}<br>
      <span class="muted">{{ order.items }} item{% if order.items != 1 %}s{% endif %} to {{ order.city }},
      {{ order.status | title }}</span></td>
    <td class="amount">{{ order.total }}</td>
  </tr>
{% endfor %}
  <tr><td><strong>Total</strong></td><td class="amount"><strong>{{ total }}</strong></td></tr>
</table>
{% if notes %}<p>{{ notes }}</p>{% endif %}
<p><a class="button" href="{{ dashboard_url }}">Open your orders</a></p>
<p class="muted">You receive this summary every Monday because weekly summaries are switched on for
{{ customer.email }}. Change how often you get it in your <a href="{{ settings_url }}">notification
settings</a>. Questions about an order? Reply to this message and our team answers within a day.</p>
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["customer", "period", "orders", "total", "dashboard_url", "settings_url", "company_name"],
    "properties": {
        "customer": {"type": "object", "required": ["first_name", "email"],
                     "properties": {"first_name": {"type": "string"}, "email": {"type": "string", "format": "email"}}},
        "period": {"type": "object", "required": ["start", "end"],
                   "properties": {"start": {"type": "string", "format": "date"}, "end": {"type": "string", "format": "date"}}},
        "orders": {"type": "array", "maxItems": 100, "items": {
            "type": "object", "required": ["number", "placed_on", "items", "city", "status", "total"],
            "properties": {"number": {"type": "string"}, "placed_on": {"type": "string"},
                           "items": {"type": "integer", "minimum": 0}, "city": {"type": "string"},
                           "status": {"type": "string", "enum": ["placed", "shipped", "delivered", "returned"]},
                           "total": {"type": "string"}}}},
        "total": {"type": "string"},
        "notes": {"type": "string"},
        "dashboard_url": {"type": "string", "format": "uri"},
        "settings_url": {"type": "string", "format": "uri"},
        "company_name": {"type": "string"},
    },
}  # fmt: skip

DATA: dict[str, Any] = {
    "customer": {"first_name": "Ada", "email": "ada@example.com"},
    "period": {"start": "2026-11-23", "end": "2026-11-29"},
    "orders": [{"number": f"A-{10000 + n}", "placed_on": f"2026-11-{23 + n % 7}", "items": 1 + n % 4,
                "city": ["Berlin", "Lyon", "Porto", "Leeds"][n % 4],
                "status": ["placed", "shipped", "delivered", "returned"][n % 4],
                "total": f"${20 + n * 3}.50"} for n in range(20)],
    "total": "$1,010.00",
    "notes": "Two orders are waiting for a payment confirmation.",
    "dashboard_url": "https://app.acme.example/orders",
    "settings_url": "https://app.acme.example/settings/notifications",
    "company_name": "Acme Inc.",
}  # fmt: skip


def parts() -> tuple[TemplateVersion, TemplateVersion, dict[str, TemplateVersion]]:
    shipped = {e.template_id: e for e in read_bundle(ROOT / "templates")}
    layout = TemplateVersion("base", 1, shipped["base"].source, "bench", 0.0)
    partials = {i: TemplateVersion(i, 1, e.source, "bench", 0.0)
                for i, e in shipped.items() if e.source.kind is TemplateKind.PARTIAL}  # fmt: skip
    source = TemplateSource(subject="Your orders this week, {{ customer.first_name }}", html=HTML,
                            preheader="{{ orders | length }} orders, {{ total }}", layout="base", schema=SCHEMA)
    return TemplateVersion("weekly-orders", 1, source, "bench", 0.0), layout, partials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    version, layout, partials = parts()

    compile_times = []
    for _ in range(5):
        started = time.perf_counter()
        compiled = CompiledTemplate(version, layout, partials)
        compile_times.append(time.perf_counter() - started)
    sample = compiled.render(DATA)
    size = len(sample.html.encode())

    rates = []
    for _ in range(args.rounds):
        count, started = 0, time.process_time()
        deadline = time.perf_counter() + args.seconds
        while time.perf_counter() < deadline:
            compiled.render(DATA)
            count += 1
        rates.append(count / (time.process_time() - started))  # per second of this core's CPU
    report = {
        "renders_per_second_per_core": round(statistics.median(rates)),
        "rounds": [round(r) for r in rates],
        "ms_per_render": round(1000 / statistics.median(rates), 3),
        "cold_compile_ms": round(1000 * statistics.median(compile_times), 1),
        "html_bytes": size,
        "text_bytes": len(sample.text.encode()),
        "goal": ">= 1,500 renders/s per core",
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"| renders/s per core (median of {args.rounds}) | ms/render | cold compile | HTML size | goal |")
    print("|---:|---:|---:|---:|---|")
    print(f"| {report['renders_per_second_per_core']:,} ({', '.join(f'{r:,}' for r in report['rounds'])}) | "
          f"{report['ms_per_render']} | {report['cold_compile_ms']} ms | {size / 1024:.1f} KB | "
          f"{report['goal']}: {'met' if report['renders_per_second_per_core'] >= 1500 else 'NOT met'} |")  # fmt: skip


if __name__ == "__main__":
    main()
