"""A run's report: `metrics.json`, three PNG plots and an `index.html` that shows them.

The report is what a person reads after a simulation (or a live swarm run) to see *why* it
passed or failed: how fast gossip spread, when the supply views converged again after the
faults healed, and which faults fell where. It is written from the result object alone, so
the simulator stays free of plotting, and anything shaped like a `SimResult` (the live-swarm
runner's result too) can be reported. Live runs may lack some series, so every plot copes
with empty data and the page says so instead of showing a blank chart.

Plots use matplotlib's non-interactive `Agg` backend, chosen before pyplot is imported, so a
report renders the same on a headless CI machine as on a laptop.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from matplotlib.axes import Axes

LATENCY_PNG = "latency_cdf.png"
CONVERGENCE_PNG = "convergence.png"
FAULTS_PNG = "faults.png"
METRICS_JSON = "metrics.json"
INDEX_HTML = "index.html"

FAULT_LABELS_MAX = 40
"""Faults annotated with their text on the timeline; past this a plot is unreadable anyway."""
HTML_ROWS_MAX = 200
"""Rows of any one list (faults, crashes, message kinds) written into the page."""
CONVERGED = 1.0 - 1e-9
SPLIT_KINDS = ("partition", "cut", "one_way")
"""Faults that split the network until the next heal (simulator: faults.NetworkFault)."""


class VerdictLike(Protocol):
    @property
    def ok(self) -> bool: ...
    @property
    def detail(self) -> str: ...


class MetricsLike(Protocol):
    @property
    def delivery_latency_ms(self) -> Sequence[int]: ...
    @property
    def convergence(self) -> Sequence[tuple[int, float]]: ...
    @property
    def faults(self) -> Sequence[tuple[int, str]]: ...
    @property
    def messages(self) -> Mapping[str, int]: ...
    @property
    def crashes(self) -> Sequence[str]: ...
    @property
    def phase_end_ms(self) -> int | None: ...


class ResultLike(Protocol):
    """The shape of `simulator.SimResult`; the live-swarm runner's result matches it too."""

    @property
    def seed(self) -> int: ...
    @property
    def scenario_name(self) -> str: ...
    @property
    def nodes(self) -> int: ...
    @property
    def sim_ms(self) -> int: ...
    @property
    def wall_s(self) -> float: ...
    @property
    def events(self) -> int: ...
    @property
    def trace_sha256(self) -> str: ...
    @property
    def checkers(self) -> Mapping[str, VerdictLike]: ...
    @property
    def ok(self) -> bool: ...
    @property
    def replay_command(self) -> str: ...
    @property
    def metrics(self) -> MetricsLike: ...

    def to_json(self) -> dict[str, Any]: ...


# ---------------------------------------------------------------------------------------------
# derived figures


def latency_stats(latencies_ms: Sequence[int]) -> dict[str, float | int | None]:
    """p50/p90/p99/max of the delivery latencies; None everywhere when there are none."""
    import numpy as np

    if not latencies_ms:
        return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    arr = np.asarray(latencies_ms, dtype=np.float64)
    p50, p90, p99 = (round(float(v), 1) for v in np.percentile(arr, [50, 90, 99]))
    return {
        "count": len(arr),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": int(arr.max()),
    }


def convergence_after_heal_ms(
    convergence: Sequence[tuple[int, float]], phase_end_ms: int | None
) -> int | None:
    """Time from the heal (end of the safety phase) to the first sample from which every
    later sample is fully converged; None if the run ends unconverged or has no samples after
    the heal. A view that converges and then breaks again does not count as converged."""
    start = phase_end_ms or 0
    after = [(t, frac) for t, frac in convergence if t >= start]
    unconverged = [i for i, (_, frac) in enumerate(after) if frac < CONVERGED]
    first = unconverged[-1] + 1 if unconverged else 0
    return after[first][0] - start if first < len(after) else None


def fault_kind(description: str) -> str:
    """The first word of a fault's description ("partition", "crash", "heal", ...)."""
    head = description.strip().split(maxsplit=1)
    return head[0].rstrip(":,;").lower() if head else "?"


def partition_intervals(faults: Sequence[tuple[int, str]], end_ms: int) -> list[tuple[int, int]]:
    """(start, end) of each span during which the network was split: from a partition, cut
    or one-way fault to the next heal (or the run's end), so the convergence plot can shade
    it. A `for` on a fault reaches us already expanded into its own heal."""
    spans: list[tuple[int, int]] = []
    open_at: int | None = None
    for t, desc in sorted(faults):
        kind = fault_kind(desc)
        if kind in SPLIT_KINDS and open_at is None:
            open_at = t
        elif kind == "heal" and open_at is not None:
            spans.append((open_at, t))
            open_at = None
    if open_at is not None:
        spans.append((open_at, max(end_ms, open_at)))
    return spans


def derived_figures(result: ResultLike) -> dict[str, Any]:
    m = result.metrics
    kinds: dict[str, int] = {}
    for _, desc in m.faults:
        kinds[fault_kind(desc)] = kinds.get(fault_kind(desc), 0) + 1
    after = convergence_after_heal_ms(m.convergence, m.phase_end_ms)
    return {
        "delivery": latency_stats(m.delivery_latency_ms),
        "convergence_after_heal_ms": after,
        "converged_at_end": bool(m.convergence) and m.convergence[-1][1] >= CONVERGED,
        "phase_end_ms": m.phase_end_ms,
        "counts": {
            "faults": len(m.faults),
            "faults_by_kind": dict(sorted(kinds.items())),
            "messages": sum(m.messages.values()),
            "crashes": len(m.crashes),
            "checkers_failed": sum(1 for v in result.checkers.values() if not v.ok),
            "convergence_samples": len(m.convergence),
        },
        "events_per_wall_s": round(result.events / result.wall_s, 1) if result.wall_s > 0 else None,
    }


# ---------------------------------------------------------------------------------------------
# plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: no display, same output everywhere
    import matplotlib.pyplot as plt

    return plt


def _mpl(text: str) -> str:
    """Text as matplotlib shows it literally: a `$` would otherwise start math mode."""
    return text.replace("$", r"\$")


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def plot_latency_cdf(latencies_ms: Sequence[int], title: str, path: Path) -> bool:
    """CDF of gossip first-arrival latency with p50 and p99 marked; False if no data."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.set_title(_mpl(f"delivery latency CDF: {title}"), fontsize=10)
    if not latencies_ms:
        _no_data(ax, "no delivery latencies recorded")
        _save(fig, path)
        return False
    xs = np.sort(np.asarray(latencies_ms, dtype=np.float64))
    ys = np.arange(1, len(xs) + 1) / len(xs)
    ax.step(xs, ys, where="post", color="tab:blue", label=f"{len(xs)} deliveries")
    for q, color in ((50, "tab:green"), (99, "tab:red")):
        v = float(np.percentile(xs, q))
        ax.axvline(v, color=color, linestyle="--", linewidth=1, label=f"p{q} = {v:.0f} ms")
    ax.set_xlabel("first-arrival latency (ms)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    return True


def _mark_phase(ax: Axes, phase_end_ms: int | None) -> None:
    if phase_end_ms is None:
        return
    x = phase_end_ms / 1000
    ax.axvline(x, color="black", linewidth=1.5)
    for text, align in ((" liveness \u2192", "left"), ("\u2190 safety ", "right")):
        ax.text(x, 1.0, text, transform=ax.get_xaxis_transform(), va="bottom", ha=align, size=8)


def plot_convergence(m: MetricsLike, sim_ms: int, title: str, path: Path) -> bool:
    """Fraction of honest live nodes with a complete supply view over simulated time, with
    faults as thin lines, partitions shaded and the safety/liveness boundary marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.set_title(_mpl(f"supply-view convergence: {title}"), fontsize=10, pad=16)
    if not m.convergence:
        _no_data(ax, "no convergence samples recorded")
        _save(fig, path)
        return False
    for k, (start, end) in enumerate(partition_intervals(m.faults, sim_ms)):
        label = "network split" if k == 0 else None
        ax.axvspan(start / 1000, end / 1000, color="tab:orange", alpha=0.15, lw=0, label=label)
    for t, _ in m.faults:
        ax.axvline(t / 1000, color="0.6", linestyle=":", linewidth=0.8)
    ts = [t / 1000 for t, _ in m.convergence]
    fr = [f for _, f in m.convergence]
    ax.step(ts, fr, where="post", color="tab:blue", label="converged")
    _mark_phase(ax, m.phase_end_ms)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(0, max(sim_ms / 1000, ts[-1]))
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("fraction converged")
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_faults(m: MetricsLike, sim_ms: int, title: str, path: Path) -> bool:
    """One row per fault kind, a marker at each fault, the first few labelled with their text."""
    plt = _pyplot()
    kinds = sorted({fault_kind(d) for _, d in m.faults})
    fig, ax = plt.subplots(figsize=(8, max(2.5, 1.0 + 0.5 * len(kinds))))
    ax.set_title(_mpl(f"fault timeline: {title}"), fontsize=10, pad=16)
    if not m.faults:
        _no_data(ax, "no faults injected")
        _save(fig, path)
        return False
    row = {k: i for i, k in enumerate(kinds)}
    xs = [t / 1000 for t, _ in m.faults]
    ys = [row[fault_kind(d)] for _, d in m.faults]
    ax.scatter(xs, ys, marker="|", s=200, color="tab:red", linewidths=2)
    for (t, desc), y in list(zip(m.faults, ys, strict=True))[:FAULT_LABELS_MAX]:
        label = desc if len(desc) <= 32 else desc[:31] + "\u2026"
        ax.annotate(
            _mpl(label),
            (t / 1000, y),
            xytext=(3, 6),
            textcoords="offset points",
            fontsize=6,
            rotation=20,
        )
    _mark_phase(ax, m.phase_end_ms)
    ax.set_yticks(range(len(kinds)), [_mpl(k) for k in kinds])
    ax.set_ylim(-0.6, len(kinds) - 0.2)
    ax.set_xlim(0, max(sim_ms / 1000, max(xs)) * 1.02 or 1)
    ax.set_xlabel("simulated time (s)")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
    return True


# ---------------------------------------------------------------------------------------------
# page


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object, unit: str = "") -> str:
    return "n/a" if value is None else f"{value}{unit}"


def _key_rows(result: ResultLike, d: dict[str, Any]) -> list[tuple[str, str]]:
    lat, after = d["delivery"], d["convergence_after_heal_ms"]
    return [
        ("nodes", str(result.nodes)),
        ("simulated time", f"{result.sim_ms / 1000:.1f} s"),
        ("wall time", f"{result.wall_s:.2f} s"),
        ("events", f"{result.events} ({_fmt(d['events_per_wall_s'])} per wall second)"),
        ("trace SHA-256", result.trace_sha256 or "n/a"),
        (
            "delivery p50 / p90 / p99 / max",
            " / ".join(_fmt(lat[k], " ms") for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")),
        ),
        ("deliveries sampled", str(lat["count"])),
        ("convergence after heal", "never" if after is None else f"{after / 1000:.1f} s"),
        ("faults", str(d["counts"]["faults"])),
        ("messages", str(d["counts"]["messages"])),
        ("crashes", str(d["counts"]["crashes"])),
    ]


def _list_section(title: str, items: Sequence[str]) -> str:
    if not items:
        return ""
    rows = "".join(f"<li>{_e(x)}</li>" for x in items[:HTML_ROWS_MAX])
    more = len(items) - HTML_ROWS_MAX
    tail = f"<li>... and {more} more (see {METRICS_JSON})</li>" if more > 0 else ""
    return f"<h2>{_e(title)}</h2><ul class='mono'>{rows}{tail}</ul>"


PLOTS = (
    (LATENCY_PNG, "latency", "gossip delivery latency (CDF)",
     "No delivery latencies were recorded for this run."),
    (CONVERGENCE_PNG, "convergence", "supply-view convergence over simulated time",
     "No convergence samples were recorded for this run."),
    (FAULTS_PNG, "faults", "fault timeline", "No faults were injected in this run."),
)  # fmt: skip
"""(file, has-data key, caption, what the page says when the plot has no data)"""


def _figure(name: str, caption: str, has_data: bool, empty_text: str) -> str:
    note = "" if has_data else f"<p class='nodata'>{_e(empty_text)}</p>"
    return f"<figure><img src='{name}' alt='{_e(caption)}'>{note}<figcaption>{_e(caption)}</figcaption></figure>"  # noqa: E501


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:980px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}.ok{background:#d7f5d7;color:#135d13}
.fail{background:#fbd6d6;color:#8a1111}.mono,code{font-family:ui-monospace,monospace}
code{background:#f3f3f3;padding:.2em .4em;user-select:all}figure{margin:1em 0}
img{max-width:100%;border:1px solid #eee}.nodata{color:#666;font-style:italic}
.banner{padding:.5em 1em;font-weight:bold;display:inline-block}
"""


def render_html(result: ResultLike, d: dict[str, Any], has_data: dict[str, bool]) -> str:
    """The whole page as one string; every value from the run or scenario is escaped."""
    verdicts = "".join(
        f"<tr class='{'ok' if v.ok else 'fail'}'><td>{_e(name)}</td>"
        f"<td>{'ok' if v.ok else 'FAILED'}</td><td class='mono'>{_e(v.detail)}</td></tr>"
        for name, v in sorted(result.checkers.items())
    )
    keys = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _key_rows(result, d))
    msgs = sorted(result.metrics.messages.items(), key=lambda kv: (-kv[1], kv[0]))
    msg_rows = "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in msgs[:HTML_ROWS_MAX])
    faults = [f"{t / 1000:9.3f} s  {desc}" for t, desc in result.metrics.faults]
    status, cls = ("PASSED", "ok") if result.ok else ("FAILED", "fail")
    title = f"gpumesh run: {result.scenario_name}, seed {result.seed}"
    figures = "\n".join(
        _figure(png, caption, has_data[key], empty) for png, key, caption, empty in PLOTS
    )
    copy_js = "navigator.clipboard.writeText(document.getElementById('replay').textContent)"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>{_CSS}</style></head><body>
<h1>{_e(result.scenario_name)}</h1>
<p>seed <b class="mono">{_e(result.seed)}</b> &middot; {_e(result.nodes)} nodes &middot;
<span class="banner {cls}">{status}</span></p>
<p>replay: <code id="replay">{_e(result.replay_command)}</code>
<button type="button" onclick="{_e(copy_js)}">copy</button></p>
<h2>Checkers</h2><table><tr><th>checker</th><th>verdict</th><th>detail</th></tr>{verdicts}</table>
<h2>Key figures</h2><table>{keys}</table>
<h2>Plots</h2>
{figures}
{_list_section("Faults", faults)}
{_list_section("Crashes", list(result.metrics.crashes))}
<h2>Messages</h2><table><tr><th>kind</th><th>count</th></tr>{msg_rows}</table>
<p>All numbers: <a href="{METRICS_JSON}">{METRICS_JSON}</a></p>
</body></html>
"""


def write_report(result: ResultLike, out_dir: Path) -> Path:
    """Write metrics.json, the three plots and index.html into `out_dir` (created if need be)
    and return the path of index.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    d = derived_figures(result)
    title = f"{result.scenario_name}, seed {result.seed}"
    m = result.metrics
    has_data = {
        "latency": plot_latency_cdf(m.delivery_latency_ms, title, out_dir / LATENCY_PNG),
        "convergence": plot_convergence(m, result.sim_ms, title, out_dir / CONVERGENCE_PNG),
        "faults": plot_faults(m, result.sim_ms, title, out_dir / FAULTS_PNG),
    }
    doc = dict(result.to_json())
    doc["derived"] = d
    (out_dir / METRICS_JSON).write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
    index = out_dir / INDEX_HTML
    index.write_text(render_html(result, d, has_data), encoding="utf-8")
    return index
