"""Render a drill scorecard: rows for a table, Markdown (Prefect artifact, `--format md`), and one
self-contained HTML page with a timeline chart in inline SVG (`--format html`)."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime

COLOURS = {"east": "#1f77b4", "west": "#ff7f0e"}
OTHER = "#7f7f7f"


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.2f}{unit}"
    return f"{value}{unit}"


def _time(at: float | None) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at else "-"


def summary_rows(card: dict) -> list[tuple[str, str, str]]:
    """(measure, failover, failback) rows: the scorecard as people read it."""
    legs = [card.get("failover") or {}, card.get("failback") or {}]

    def row(name, getter):
        return (name, *(getter(leg) if leg else "-" for leg in legs))

    rows = [
        row("run", lambda leg: f"{leg['run_id']} ({leg['status']})"),
        row("trigger", lambda leg: "{kind}: {by} - {reason}".format(**leg["trigger"])),
        row("authority", lambda leg: f"{leg.get('owner_before')} -> {leg.get('owner_after')}"),
        row("RTO (gates excluded)", lambda leg: _fmt(leg.get("rto_seconds"), " s")),
        row("gate waits", lambda leg: _fmt(leg.get("gate_wait_seconds"), " s")),
        row("write outage (gate waits in the fenced window included)",
            lambda leg: _fmt(leg.get("write_outage_seconds", leg.get("write_gap_seconds")), " s")),
        row("of which gate waits in the fenced window",
            lambda leg: _fmt(leg.get("gate_wait_in_fenced_window_seconds"), " s")),
        row("automated part of the write outage",
            lambda leg: _fmt(leg.get("automated_outage_seconds"), " s")),
        row("producers switched cleanly", lambda leg: _fmt(leg.get("producers_switched_cleanly"))),
        row("second-writer violations", lambda leg: _fmt(leg.get("second_writer_violations"))),
        row("RPO (records lost)", lambda leg: _fmt(leg.get("rpo_records"))),
    ]
    for group in card.get("consumers", {}):
        rows.append(row(f"{group}: missing / duplicates", lambda leg, g=group: (
            f"{leg['consumers'][g]['missing']} / {leg['consumers'][g]['duplicates']}"
            if g in leg.get("consumers", {}) else "-")))
    lag = card.get("lag_before_failover")
    if lag:
        seconds = _fmt(float(lag["seconds"]), " s")
        rows.append(("lag before failover", f"{lag['records']} records / {seconds}", ""))
    if card.get("variant") == "unplanned":
        failover = legs[0]
        predicted = _fmt(failover.get("predicted_at_risk_records"))
        lost = _fmt(failover.get("rpo_records"))
        rows.append(("records at risk predicted / lost", f"{predicted} / {lost}", ""))
        accounted = (card.get("divergent") or {}).get("accounted") or {}
        rows.append(("divergent records by policy", "", f"{card['divergent_policy']}: "
                     f"{accounted.get('by_fate', {})}"))
    return rows


def objective_rows(card: dict) -> list[tuple[str, str, str, str]]:
    return [(o["objective"], _fmt(o["target"]), _fmt(o["actual"]), "pass" if o["passed"] else "FAIL")
            for o in card.get("objectives", [])]


def headline(card: dict) -> str:
    work = card.get("workload", {})
    return (f"{card['variant']} drill of {card['domain']}: {card['outcome'].upper()} - "
            f"{work.get('acked', 0)} records acknowledged at {work.get('rate')} records/s, "
            f"groups {', '.join(card.get('consumers', {}))}")


def to_markdown(card: dict) -> str:
    lines = [f"# Failover drill: {card['outcome']}", "", headline(card), "",
             f"- started {_time(card.get('started_at'))}, ended {_time(card.get('ended_at'))}",
             f"- approvals: {card['approvals']['note']}"]
    if card.get("error"):
        lines.append(f"- error: {card['error']}")
    lines += ["", "| measure | failover | failback |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in summary_rows(card)]
    lines += ["", "| objective | target | actual | result |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in objective_rows(card)]
    return "\n".join(lines)


# -- HTML ----------------------------------------------------------------------------------------

def _chart(card: dict, width: int = 960, svg_id: str = "timeline", extra: str = "") -> str:
    """Write rate per region, replication lag, authority changes and gates on one time axis."""
    timeline = card.get("timeline", {})
    start = card.get("started_at") or 0
    end = card.get("ended_at") or start + 1
    rates = timeline.get("rates", {})
    lag = [s for s in timeline.get("lag", []) if s.get("records") is not None]
    left, right, top = 60, 20, 20
    rate_h, lag_h, gap = 180, 90, 40
    height = top + rate_h + gap + lag_h + 60
    span = max(end - start, 1e-6)

    def x(at: float) -> float:
        return left + (min(max(at, start), end) - start) / span * (width - left - right)

    parts = [f'<svg id="{html.escape(svg_id)}"{extra} xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{rate_h}" fill="#fafafa" '
             'stroke="#ccc"/>',
             f'<rect x="{left}" y="{top + rate_h + gap}" width="{width - left - right}" height="{lag_h}" '
             'fill="#fafafa" stroke="#ccc"/>']
    # gates and runbook steps behind the data
    for leg in ("failover", "failback"):
        data = card.get(leg) or {}
        for step in data.get("steps", []):
            if step["gate"]:
                x0, x1 = x(step["started_at"]), x(step["ended_at"])
                parts.append(f'<rect class="gate" x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 2):.1f}" '
                             f'height="{rate_h + gap + lag_h}" fill="#2ca02c" opacity="0.25">'
                             f'<title>{html.escape(leg)} gate {html.escape(step["name"])}: '
                             f'{step["seconds"]} s</title></rect>')
    peak = max([c for series in rates.values() for _, c in series] + [1])
    for region, series in sorted(rates.items()):
        points = " ".join(f"{x(at + 0.5):.1f},{top + rate_h - c / peak * (rate_h - 10):.1f}"
                          for at, c in series)
        parts.append(f'<polyline class="rate" data-region="{html.escape(region)}" points="{points}" '
                     f'fill="none" stroke="{COLOURS.get(region, OTHER)}" stroke-width="2"/>')
    lag_peak = max([s["records"] for s in lag] + [1])
    if lag:
        base = top + rate_h + gap + lag_h
        points = " ".join(f"{x(s['at']):.1f},{base - s['records'] / lag_peak * (lag_h - 10):.1f}"
                          for s in lag)
        parts.append(f'<polyline class="lag" points="{points}" fill="none" stroke="#d62728" '
                     'stroke-width="2"/>')
    for change in timeline.get("authority", []):
        cx = x(change["at"])
        colour = COLOURS.get(change["owner"], OTHER) if change["state"] == "ACTIVE" else "#000"
        label = f"e{change['epoch']} {change['owner']} {change['state']}"
        parts.append(f'<line class="authority" x1="{cx:.1f}" y1="{top}" x2="{cx:.1f}" '
                     f'y2="{top + rate_h + gap + lag_h}" stroke="{colour}" stroke-dasharray="4,3"/>'
                     f'<text x="{cx + 2:.1f}" y="{top + 10 + (change["epoch"] % 3) * 12}" fill="{colour}">'
                     f'{html.escape(label)}</text>')
    for event in timeline.get("events", []):
        if event["kind"] == "fault":
            ex = x(event["at"])
            parts.append(f'<circle class="fault" cx="{ex:.1f}" cy="{top + rate_h + gap / 2:.1f}" r="5" '
                         f'fill="#9467bd"><title>{html.escape(event["detail"])}</title></circle>')
    axis_y = top + rate_h + gap + lag_h
    for i in range(6):
        at = start + span * i / 5
        parts.append(f'<text x="{x(at):.1f}" y="{axis_y + 16}" text-anchor="middle">'
                     f'+{at - start:.0f} s</text>')
    parts += [f'<text x="5" y="{top + 12}">{peak}/s</text>', f'<text x="5" y="{top + rate_h}">0</text>',
              f'<text x="5" y="{top + rate_h + gap + 12}">{lag_peak}</text>',
              f'<text x="{left}" y="{top + rate_h + 14}" fill="#555">acknowledged writes per second, '
              'by region</text>',
              f'<text x="{left}" y="{axis_y + 32}" fill="#555">replication lag (records at risk)</text>']
    legend_x = left
    for region, colour in (*COLOURS.items(), ("lag", "#d62728"), ("gate", "#2ca02c"), ("fault", "#9467bd")):
        parts.append(f'<rect x="{legend_x}" y="{axis_y + 40}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{legend_x + 14}" y="{axis_y + 49}">{region}</text>')
        legend_x += 80
    parts.append("</svg>")
    return "".join(parts)


def _table(rows, headers, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def to_html(card: dict) -> str:
    """One self-contained page: no scripts, styles or images from elsewhere."""
    outcome = card["outcome"]
    colour = "#2ca02c" if outcome == "passed" else "#d62728"
    notes = [f"started {_time(card.get('started_at'))}, ended {_time(card.get('ended_at'))}",
             f"approvals: {card['approvals']['note']}"]
    if card.get("error"):
        notes.append(f"error: {card['error']}")
    raw = html.escape(json.dumps({k: v for k, v in card.items() if k != "timeline"}, indent=2, default=str))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Baton drill {html.escape(card['runs']['failover'] or '')}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} th{{background:#f0f0f0}}
.outcome{{color:{colour};font-weight:bold}} pre{{background:#f7f7f7;padding:1em;overflow:auto}}</style></head>
<body><h1>Failover drill: <span class="outcome" id="outcome">{html.escape(outcome)}</span></h1>
<p>{html.escape(headline(card))}</p><ul>{''.join(f'<li>{html.escape(n)}</li>' for n in notes)}</ul>
<h2>Scorecard</h2>{_table(summary_rows(card), ('measure', 'failover', 'failback'), 'scorecard')}
<h2>Objectives</h2>{_table(objective_rows(card), ('objective', 'target', 'actual', 'result'), 'objectives')}
<h2>Timeline</h2>{_chart(card)}
<details><summary>scorecard (JSON)</summary><pre>{raw}</pre></details>
</body></html>
"""


# -- evacuation drills: one scorecard per domain, one timeline lane per domain --------------------

def evacuation_rows(card: dict) -> list[tuple[str, ...]]:
    """(domain, evacuation result, return result, acknowledged, missing / duplicates per group,
    second writers, RTO out / back, outcome) per domain."""
    results = {leg: {r["domain"]: r for r in rows or []}
               for leg, rows in (card.get("results") or {}).items()}
    rows = []
    for name, domain in sorted(card.get("domains", {}).items()):
        consumers = ", ".join(f"{g} {c['missing']} / {c['duplicates']}"
                              for g, c in domain.get("consumers", {}).items())
        legs = [domain.get("failover") or {}, domain.get("failback") or {}]
        outcomes = (results.get(leg, {}).get(name, {}).get("outcome", "-")
                    for leg in ("failover", "failback"))
        rows.append((name, *outcomes,
                     str(domain.get("workload", {}).get("acked", 0)), consumers,
                     str(len(domain.get("second_writer_violations", []))),
                     " / ".join(_fmt(leg.get("rto_seconds"), " s") for leg in legs), domain["outcome"]))
    return rows


EVACUATION_HEADERS = ("domain", "evacuation", "return", "acknowledged", "missing / duplicates per group",
                      "second writers", "RTO out / back", "outcome")


def evacuation_markdown(card: dict) -> str:
    lines = [f"# Evacuation drill of {card['from_region']}: {card['outcome']}", "",
             f"- evacuations: {card.get('evacuations')}"]
    if card.get("error"):
        lines.append(f"- error: {card['error']}")
    lines += ["", "| " + " | ".join(EVACUATION_HEADERS) + " |", "|" + "---|" * len(EVACUATION_HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in evacuation_rows(card)]
    return "\n".join(lines)


def evacuation_to_html(card: dict) -> str:
    """One self-contained page: every domain's checker, and one timeline lane per domain on the
    same time axis (the evacuation's start to its end)."""
    outcome = card["outcome"]
    colour = "#2ca02c" if outcome == "passed" else "#d62728"
    bounds = {"started_at": card.get("started_at"), "ended_at": card.get("ended_at")}
    lanes = "".join(
        f'<h3>{html.escape(name)}</h3>'
        + _chart(domain | bounds, svg_id=f"lane-{name}",
                 extra=f' class="lane" data-domain="{html.escape(name)}"')
        for name, domain in sorted(card.get("domains", {}).items()))
    notes = [f"evacuations: {card.get('evacuations')}",
             f"started {_time(card.get('started_at'))}, ended {_time(card.get('ended_at'))}"]
    if card.get("error"):
        notes.append(f"error: {card['error']}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Baton evacuation drill {html.escape(str(card.get('evacuations', {}).get('failover')))}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} th{{background:#f0f0f0}}
.outcome{{color:{colour};font-weight:bold}}</style></head>
<body><h1>Evacuation drill of {html.escape(card['from_region'])}:
<span class="outcome" id="outcome">{html.escape(outcome)}</span></h1>
<ul>{''.join(f'<li>{html.escape(n)}</li>' for n in notes)}</ul>
<h2>Domains</h2>{_table(evacuation_rows(card), EVACUATION_HEADERS, 'domains')}
<h2>Timeline, one lane per domain</h2><div id="timeline">{lanes}</div>
</body></html>
"""


def drill_card(audit, run_id: str) -> dict:
    """The scorecard of the drill a run belongs to (stored with its failover run)."""
    from sqlmodel import select

    from baton.audit.models import DrillReport
    from baton.errors import UsageError

    view = audit.run(run_id)  # UsageError naming the run if it does not exist
    if view.drill_reports:
        return json.loads(view.drill_reports[-1].report)
    with audit.transaction() as session:
        rows = session.exec(select(DrillReport).order_by(DrillReport.seq.desc()).limit(200)).all()
        for row in rows:
            card = json.loads(row.report)
            if run_id in (card.get("runs") or {}).values():
                return card
    raise UsageError(f"run {run_id} is not part of a drill (no drill report names it); "
                     "--format html renders drills, md and json render any run")
