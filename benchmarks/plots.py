"""The serving benchmark's figure: throughput (RTFx, requests/s), latency p50/p95/p99 and, when streaming, time to
first token against concurrency (or request rate), and the per-request real-time factor at each level; servers
overlaid, one color each."""

from __future__ import annotations

from pathlib import Path

PERCENTILE_STYLES = {50: "-", 95: "--", 99: ":"}


def plot(rows: list[dict], rtfs: dict[tuple[str, float], list[float]], x_key: str, path: Path, title: str) -> Path:
    """`rows` carry `server` and `x_key`; `rtfs` maps (server, x) to each request's real-time factor."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    servers = list(dict.fromkeys(row["server"] for row in rows))
    streamed = any(row.get("p50_ttft_s") is not None for row in rows)
    figure, axes = plt.subplots(2, 3, figsize=(16, 9), constrained_layout=True)
    (rtfx, rps, latency), (ttft, distribution, legend) = axes
    colors = {server: f"C{i}" for i, server in enumerate(servers)}
    label = "concurrency" if x_key == "concurrency" else "request rate (req/s)"
    for server in servers:
        mine = [row for row in rows if row["server"] == server]
        xs = [row[x_key] for row in mine]
        rtfx.plot(xs, [row["rtfx"] for row in mine], "o-", color=colors[server], label=server)
        rps.plot(xs, [row["requests_per_s"] for row in mine], "o-", color=colors[server], label=server)
        for p, style in PERCENTILE_STYLES.items():
            latency.plot(xs, [row[f"p{p}_latency_s"] for row in mine], style, marker="o", color=colors[server],
                         label=f"{server} p{p}")
            if streamed:
                ttft.plot(xs, [row[f"p{p}_ttft_s"] for row in mine], style, marker="o", color=colors[server],
                          label=f"{server} p{p}")
    for axis, name in ((rtfx, "RTFx (audio s per s)"), (rps, "requests/s"), (latency, "latency (s)"),
                       (ttft, "time to first token (s)")):
        axis.set_xscale("log", base=2)
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_xlabel(label)
        axis.set_ylabel(name)
        axis.grid(True, alpha=0.3)
    latency.set_yscale("log")
    if streamed:
        ttft.set_yscale("log")
        ttft.legend(fontsize=7)
    else:
        ttft.text(0.5, 0.5, "not streamed: no time to first token", ha="center", va="center",
                  transform=ttft.transAxes)
    rtfx.legend()
    latency.legend(fontsize=7)

    levels = sorted({row[x_key] for row in rows})
    width = 0.8 / len(servers)
    for i, server in enumerate(servers):
        data = [rtfs.get((server, level), []) for level in levels]
        positions = [k + (i - (len(servers) - 1) / 2) * width for k in range(len(levels))]
        boxes = distribution.boxplot([d if d else [float("nan")] for d in data], positions=positions,
                                     widths=width * 0.9, patch_artist=True, showfliers=False)
        for box in boxes["boxes"]:
            box.set_facecolor(colors[server])
            box.set_alpha(0.5)
    distribution.set_xticks(range(len(levels)), [f"{level:g}" for level in levels])
    distribution.set_xlabel(label)
    distribution.set_ylabel("per-request RTF (latency / audio s)")
    distribution.set_yscale("log")
    distribution.grid(True, alpha=0.3)
    legend.axis("off")
    legend.legend(handles=[Patch(color=colors[s], label=s) for s in servers], loc="center",
                  title="servers")
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
