"""``audit timeline``'s formats: a table, JSON, a mermaid gantt chart, and one self-contained
HTML page (inline SVG and CSS, no script, nothing fetched: it opens offline).

Each takes the transitions of ``projections.history.LedgerHistory.timeline``. The chart and
the page draw each session as a lane of the states it was in over time, a transition as a
tick, a failure (``failed``, or a failure reason) in red; the page lists the state changes
below the chart. Sessions are the lanes; peers' and other aggregates' events are listed in
the table and JSON only.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from l2_session.infrastructure.ledger.verify_report import printable
from l2_session.projections.history import Transition, iso

FORMATS = ("table", "json", "mermaid", "html")
MAX_LANES = 500  # sessions drawn at most (the page says how many more there are)
MAX_ROWS = 20_000  # state changes listed at most on the page

COLOURS = {
    "idle": "#9aa5b1",
    "handshake_initiated": "#f0b429",
    "handshake_received": "#f0b429",
    "established": "#3ebd93",
    "degraded": "#f7c948",
    "suspended": "#7b93db",
    "failed": "#e12d39",
    "closed": "#52606d",
}


@dataclass
class Lane:
    """One session's states over time: (state, from µs, to µs or None while it lasts)."""

    session: str
    peer: str | None = None
    spans: list[tuple[str, int, int | None]] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)  # (µs, what)
    ticks: list[int] = field(default_factory=list)


def lanes(steps: Iterable[Transition]) -> tuple[list[Lane], list[Transition], int, int]:
    """The sessions' lanes, the state changes among ``steps``, and the first and last time."""
    found: dict[str, Lane] = {}
    changes: list[Transition] = []
    first = last = None
    for step in steps:
        first = step.at_us if first is None else min(first, step.at_us)
        last = step.at_us if last is None else max(last, step.at_us)
        if step.kind != "session" or step.state is None:
            continue
        lane = found.setdefault(str(step.aggregate_id), Lane(str(step.aggregate_id)))
        failed = step.state == "failed" or (step.reason is not None and step.state != "closed")
        if step.state != step.state_before or failed:
            changes.append(step)
            lane.ticks.append(step.at_us)
            if lane.spans:
                state, since, _ = lane.spans[-1]
                lane.spans[-1] = (state, since, step.at_us)
            if step.state != "closed":
                lane.spans.append((step.state, step.at_us, None))
        if failed:
            lane.failures.append((step.at_us, step.reason or step.state))
    return list(found.values()), changes, first or 0, last or 0


def write_table(out: TextIO, steps: Iterable[Transition]) -> None:
    from l2_session.tools.show import print_table

    rows = [
        (s.position, iso(s.at_us), s.kind, str(s.aggregate_id), s.event,
         s.trigger, _arrow(s), s.reason)
        for s in steps
    ]  # fmt: skip
    columns = ("position", "time", "kind", "id", "event", "trigger", "state", "reason")
    print_table(None, columns, rows, out)


def _arrow(step: Transition) -> str:
    if step.state is None:
        return ""
    if step.state_before is None or step.state_before == step.state:
        return step.state
    return f"{step.state_before} → {step.state}"


def write_json(out: TextIO, steps: Iterable[Transition]) -> None:
    """A JSON array, one object per event, written as it is read."""
    out.write("[")
    for i, step in enumerate(steps):
        out.write(",\n" if i else "\n")
        out.write(json.dumps(step.to_json(), ensure_ascii=False))
    out.write("\n]\n")


def write_mermaid(out: TextIO, steps: Iterable[Transition]) -> None:
    """A mermaid gantt chart: a section per session, a bar per state it was in (``crit``
    for failed), a milestone per failure."""
    found, _, _, last = lanes(steps)
    out.write("gantt\n    title sessions over time\n    dateFormat x\n    axisFormat %H:%M:%S\n")
    for lane in found[:MAX_LANES]:
        out.write(f"    section {lane.session[:8]}\n")
        for state, since, until in lane.spans:
            end = max(until if until is not None else last, since + 1)
            tag = "crit, " if state == "failed" else ""
            out.write(
                f"    {state} : {tag}{since // 1000}, {max(end // 1000, since // 1000 + 1)}\n"
            )
        for at, what in lane.failures:
            out.write(f"    {_mermaid_text(what)} : milestone, crit, {at // 1000}, 0ms\n")
    if len(found) > MAX_LANES:
        out.write(f"    %% {len(found) - MAX_LANES} more sessions not drawn\n")


def _mermaid_text(text: str) -> str:
    return "".join(c if c.isalnum() or c in " _-." else " " for c in text).strip() or "failure"


def write_html(out: TextIO, steps: Iterable[Transition], *, title: str) -> None:
    """One page: the sessions' lanes as inline SVG, then the state changes as a table."""
    steps = list(steps)
    found, changes, first, last = lanes(steps)
    span = max(last - first, 1)
    width, label, row = 1000, 170, 22
    drawn = found[:MAX_LANES]
    height = 30 + row * len(drawn)

    def x(us: int) -> float:
        return label + (us - first) / span * (width - label - 10)

    svg: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="sessions over time">',
        f'<text x="{label}" y="14" class="axis">{_e(iso(first))}</text>',
        f'<text x="{width - 10}" y="14" class="axis" text-anchor="end">{_e(iso(last))}</text>',
    ]
    for i, lane in enumerate(drawn):
        y = 22 + i * row
        svg.append(f'<text x="4" y="{y + 13}" class="lane">{_e(lane.session[:18])}</text>')
        for state, since, until in lane.spans:
            end = until if until is not None else last
            w = max(x(end) - x(since), 1.5)
            svg.append(
                f'<rect x="{x(since):.1f}" y="{y}" width="{w:.1f}" height="{row - 6}" '
                f'fill="{COLOURS.get(state, "#cbd2d9")}"><title>{_e(lane.session)}: '
                f"{_e(state)} from {_e(iso(since))}</title></rect>"
            )
        for at in lane.ticks:
            svg.append(
                f'<line x1="{x(at):.1f}" x2="{x(at):.1f}" y1="{y}" y2="{y + row - 6}" '
                'class="tick"/>'
            )
        for at, what in lane.failures:
            svg.append(
                f'<circle cx="{x(at):.1f}" cy="{y + (row - 6) / 2}" r="5" class="failure">'
                f"<title>{_e(what)} at {_e(iso(at))}</title></circle>"
            )
    svg.append("</svg>")
    sessions = len(found)
    failures = sum(len(lane.failures) for lane in found)
    legend = " ".join(
        f'<span class="key"><i style="background:{c}"></i>{s}</span>' for s, c in COLOURS.items()
    )
    rows = "\n".join(
        f'<tr class="{"failure" if s.state == "failed" or s.reason else ""}">'
        f"<td>{s.position}</td><td>{_e(iso(s.at_us))}</td>"
        f"<td><code>{_e(str(s.aggregate_id))}</code></td><td>{_e(s.event)}</td>"
        f"<td>{_e(s.trigger or '')}</td><td>{_e(_arrow(s))}</td><td>{_e(s.reason or '')}</td></tr>"
        for s in changes[:MAX_ROWS]
    )
    more = (
        f"<p>{len(found) - MAX_LANES} more sessions are not drawn.</p>"
        if len(found) > MAX_LANES
        else ""
    )
    more += (
        f"<p>{len(changes) - MAX_ROWS} more state changes are not listed.</p>"
        if len(changes) > MAX_ROWS
        else ""
    )
    out.write(
        _PAGE.format(
            title=_e(title),
            summary=(
                f'<span id="sessions">{sessions}</span> session(s), '
                f'<span id="events">{len(steps)}</span> event(s), '
                f'<span id="changes">{len(changes)}</span> state change(s), '
                f'<span id="failures">{failures}</span> failure(s), '
                f"from {_e(iso(first))} to {_e(iso(last))}"
            ),
            legend=legend,
            svg="\n".join(svg),
            more=more,
            rows=rows,
        )
    )


def _e(text: str) -> str:
    return html.escape(printable(text), quote=True)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1f2933; }}
h1 {{ font-size: 1.3em; }}
svg {{ border: 1px solid #e4e7eb; background: #fff; }}
.axis, .lane {{ font: 11px monospace; fill: #52606d; }}
.tick {{ stroke: #1f2933; stroke-width: 0.6; }}
.failure {{ fill: #e12d39; stroke: #fff; }}
.key {{ margin-right: 1em; white-space: nowrap; }}
.key i {{ display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.3em;
          vertical-align: -0.1em; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
td, th {{ border-bottom: 1px solid #e4e7eb; padding: 0.2em 0.6em; text-align: left;
          white-space: nowrap; }}
tr.failure td {{ color: #ab091e; font-weight: 600; }}
</style></head>
<body>
<h1>{title}</h1>
<p id="summary">{summary}</p>
<p>{legend}</p>
{svg}
{more}
<table id="transitions">
<thead><tr><th>position</th><th>time</th><th>session</th><th>event</th><th>trigger</th>
<th>state</th><th>reason</th></tr></thead>
<tbody>
{rows}
</tbody></table>
</body></html>
"""


def render(fmt: str, out: TextIO, steps: Iterable[Transition], *, title: str) -> None:
    if fmt == "table":
        write_table(out, steps)
    elif fmt == "json":
        write_json(out, steps)
    elif fmt == "mermaid":
        write_mermaid(out, steps)
    else:
        write_html(out, steps, title=title)
