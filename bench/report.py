"""Render the benchmarks' figures: a table for people, JSON for programs, progress on stderr."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import orjson


def progress(message: str) -> None:
    """A progress line on stderr, so stdout stays clean for --json."""
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Aim:
    """One aim: a figure, its bound, and which side of it is good."""

    name: str
    value: float
    bound: float
    below: bool = False  # True: the figure should be at most `bound`

    @property
    def met(self) -> bool:
        """Whether the figure is on the good side of the bound."""
        return self.value <= self.bound if self.below else self.value >= self.bound

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for --json."""
        return {
            "aim": self.name,
            "value": round(self.value, 4),
            "bound": ("<= " if self.below else ">= ") + f"{self.bound:g}",
            "met": self.met,
        }


def print_json(figures: dict[str, Any]) -> None:
    """All figures as indented JSON on stdout."""
    sys.stdout.write(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode() + "\n")


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(
        c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def _table(header: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines.extend("| " + " | ".join(r) + " |" for r in rows)
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [_row(header, widths), "  ".join("-" * w for w in widths)]
    lines.extend(_row(r, widths) for r in rows)
    return "\n".join(lines)


def _ipc_rows(cells: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for c in cells:
        d, e = c["cortexd"], c["echo"]
        aim = ""
        if c["clients"] == 64:
            aim = "tput ≥ 0.8, p99 ≤ 1.5x" if c["method"] == "ping" else "tput ≥ 0.6, p99 ≤ 2x"
        elif c["clients"] == 1:
            aim = "p99 ≤ 1 ms"
        rows.append(
            [
                c["method"],
                str(c["clients"]),
                f"{d['throughput']:,.0f}",
                f"{e['throughput']:,.0f}",
                f"{c['throughput_ratio']:.2f}",
                f"{d['p50_ms']:.3f} / {d['p99_ms']:.3f}",
                f"{e['p50_ms']:.3f} / {e['p99_ms']:.3f}",
                f"{c['p99_ratio']:.2f}",
                f"{d['server_cpu_us_per_request']:.0f} / {e['server_cpu_us_per_request']:.0f}",
                f"{100 * d['server_cpu']:.0f}% / {100 * d['generator_cpu']:.0f}%",
                f"{100 * e['server_cpu']:.0f}% / {100 * e['generator_cpu']:.0f}%",
                f"{100 * d['other_cpu']:.0f}% / {100 * e['other_cpu']:.0f}%",
                aim,
            ]
        )
    return rows


def print_report(figures: dict[str, Any], aims: list[Any], *, markdown: bool = False) -> None:
    """Print the figures as aligned text tables, or as Markdown for docs/performance.md."""
    m = figures["machine"]
    s = figures["settings"]
    bullet = "- " if markdown else ""
    out = [
        f"{bullet}machine: {m['cpus']} x {m['cpu_model']}, Python {m['python']}, "
        f"Linux {m['kernel']}; load average {m['loadavg'][0]:.2f} before, "
        f"{m['loadavg_after'][0]:.2f} after",
        f"{bullet}cortexd from {figures['source']['path']} at {figures['source']['revision']}",
        f"{bullet}cells: {s['rounds']} rounds per server, alternating, each "
        f"{s['duration']:g} s measured after {s['warmup']:g} s warm-up; "
        f"{s['processes']} load generator processes",
        "",
        _table(
            [
                "method",
                "clients",
                "cortexd req/s",
                "echo req/s",
                "ratio",
                "cortexd p50/p99 ms",
                "echo p50/p99 ms",
                "p99 ratio",
                "cpu µs/req d/e",
                "cortexd cpu srv/gen",
                "echo cpu srv/gen",
                "others' cpu d/e",
                "aim",
            ],
            _ipc_rows(figures["cells"]),
            markdown,
        ),
        "",
    ]
    idle = figures["idle_connections"]
    out.append(
        bullet
        + f"{idle['held']} idle connections held (daemon saw {idle['connections_open_seen']} open, "
        f"{idle['held_sampled_ok']} of the held ones pinged fine): ping on a new connection "
        f"p50 {idle['ping_p50_ms']:.3f} ms, p99 {idle['ping_p99_ms']:.3f} ms "
        f"(first, with connect: {idle['first_ping_ms']:.3f} ms); daemon RSS {idle['rss_mb']:.1f} MB"
    )
    out.append(bullet + cli_line(figures["cli"]))
    st = figures["startup"]
    out.append(
        bullet + f"start to READY=1: {st['ready_ms']:.1f} ms; the echo server starts listening"
        f" in {st.get('echo_listening_ms', float('nan')):.1f} ms"
        f" = {st['ready_ms'] / st.get('echo_listening_ms', float('nan')):.2f}x  (aim ≤ 2x);"
        f" python -c pass {st['python_pass_ms']:.1f} ms"
    )
    i = st["idle"]
    heavy = ", ".join(i["heavy_libraries"]) or "none"
    out.append(
        bullet + f"idle daemon, no model: RSS {i['rss_mb']:.1f} MB (USS {i['uss_mb']:.1f} MB), "
        f"CPU {i['cpu_percent']:.1f}%, {i['threads']} threads; llama/numpy loaded: {heavy};"
        f" components {', '.join(i['components'])}; start-up work "
        + ("done after" if i["settled"] else "STILL RUNNING after")
        + f" {i['settle_seconds']:.1f} s"
        "  (aim RSS ≤ 35 MB)"
    )
    out.append(f"{bullet}daemon RSS after the whole run: {figures['daemon_rss_after_mb']:.1f} MB")
    out.append("")
    out.append(
        _table(
            ["aim", "figure", "bound", "met"],
            [
                [a.name, f"{a.value:.3f}", ("≤ " if a.below else "≥ ") + f"{a.bound:g}", _yes(a)]
                for a in aims
            ],
            markdown,
        )
    )
    print("\n".join(out))


def _yes(aim: Any) -> str:
    return "yes" if aim.met else "NO"


def cli_line(cli: dict[str, Any]) -> str:
    """`cortexctl status` beside `python -c pass` and the bare client, wall and CPU."""
    line = (
        f"cortexctl status: {cli['cortexctl_status_ms']:.1f} ms vs python -c pass "
        f"{cli['python_pass_ms']:.1f} ms = {cli['ratio']:.2f}x  (aim ≤ 2.5x); a bare socket"
        f" client doing the same call: {cli.get('bare_client_ms', float('nan')):.1f} ms"
    )
    if "ratio_to_bare_client" in cli:
        cpu = cli["cpu_ms"]
        line += (
            f" = {cli['ratio_to_bare_client']:.2f}x  (aim ≤ 1.3x); CPU time"
            f" {cpu['cli']:.1f} / {cpu['pass']:.1f} / {cpu['bare']:.1f} ms ="
            f" {cli['cpu_ratio']:.2f}x pass, {cli['cpu_ratio_to_bare_client']:.2f}x bare"
        )
    if "completion_ms" in cli:
        line += (
            f"; shell completion: {cli['completion_ms']:.1f} ms for a command,"
            f" {cli['completion_from_daemon_ms']:.1f} ms for alert ids from the daemon"
        )
    return line


def print_cli_report(figures: dict[str, Any], aims: list[Any], *, markdown: bool = False) -> None:
    """The `--cli-only` figures: the machine, the CLI line and its two aims."""
    m = figures["machine"]
    bullet = "- " if markdown else ""
    out = [
        f"{bullet}machine: {m['cpus']} x {m['cpu_model']}, Python {m['python']}, "
        f"Linux {m['kernel']}; load average {m['loadavg'][0]:.2f} before, "
        f"{m['loadavg_after'][0]:.2f} after",
        f"{bullet}cortexd from {figures['source']['path']} at {figures['source']['revision']}",
        bullet + cli_line(figures["cli"]),
        "",
        _table(
            ["aim", "figure", "bound", "met"],
            [
                [a.name, f"{a.value:.3f}", ("≤ " if a.below else "≥ ") + f"{a.bound:g}", _yes(a)]
                for a in aims
            ],
            markdown,
        ),
    ]
    print("\n".join(out))
