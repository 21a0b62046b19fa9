"""Charts of a memory-bank analysis (PNG through matplotlib's Agg), drawn beside the analysis.

Drawing is the slowest part of the analyzer's report: importing matplotlib and laying out three
figures cost about as much as a fifth of reading a million records. ``ChartWorker`` starts a
helper process (fork) before the memory bank is read: it imports matplotlib while the parent
reads, then draws while the parent writes the JSON and markdown report, so the user waits for
the longer of the two instead of their sum. Where fork is not available (Windows) or the helper
fails, the charts are drawn in the process itself: the same files either way.
"""
from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


MAX_CHART_CLASSES = 12   # classes drawn by name; the rest are one "others" entry (3,000 names must not stall)


def _weight(stats: dict) -> int:
    return stats["detections"] + stats["reviewed"]["tp"] + stats["reviewed"]["fn"]


def charted_classes(analysis) -> list[str]:
    """The classes drawn: those with detections or reviewed defects, the ``MAX_CHART_CLASSES - 1`` largest
    by name when there are more, then one ``others (N classes)`` entry for the rest (``class_stats``)."""
    names = [n for n, s in analysis.classes.items() if _weight(s)]
    if len(names) <= MAX_CHART_CLASSES:
        return names
    ranked = sorted(names, key=lambda n: -_weight(analysis.classes[n]))
    return ranked[:MAX_CHART_CLASSES - 1] + [_others_label(len(names) - MAX_CHART_CLASSES + 1)]


def _others_label(n: int) -> str:
    return f"others ({n})"


def class_stats(analysis, name: str) -> dict:
    """The figures the charts draw for one class, or for the ``others`` entry: the rest summed."""
    if name in analysis.classes:
        return analysis.classes[name]
    cached = getattr(analysis, "_others_stats", None)
    if cached is not None and cached[0] == name:
        return cached[1]
    top = set(charted_classes(analysis)[:-1])
    rest = [s for n, s in analysis.classes.items() if n not in top and _weight(s)]
    bins = rest[0]["confidence_histogram"]["bins"]
    counts = [sum(s["confidence_histogram"]["counts"][k] for s in rest) for k in range(len(bins) - 1)]
    by_week = {}
    for w in analysis.weeks:
        weeks = [s["by_week"][w] for s in rest if w in s["by_week"]]
        n = sum(x["detections"] for x in weeks)
        total = sum(x["mean_confidence"] * x["detections"] for x in weeks if x["mean_confidence"] is not None)
        by_week[w] = {"detections": n, "per_100_images": sum(x["per_100_images"] for x in weeks),
                      "mean_confidence": total / n if n else None}
    tp, fp, fn = (sum(s["reviewed"][k] for s in rest) for k in ("tp", "fp", "fn"))
    stats = {"detections": sum(s["detections"] for s in rest), "confidence_histogram": {"bins": bins, "counts": counts},
             "by_week": by_week, "reviewed": {"tp": tp, "fp": fp, "fn": fn,
                                              "precision": tp / (tp + fp) if tp + fp else None,
                                              "recall": tp / (tp + fn) if tp + fn else None}}
    try:
        analysis._others_stats = (name, stats)
    except AttributeError:  # a frozen analysis: computed again when asked
        pass
    return stats


def chart_paths(analysis, json_path: Path) -> list[Path]:
    """The files ``draw_charts`` writes for this analysis, known before drawing."""
    if not charted_classes(analysis):
        return []
    stem = json_path.with_suffix("")
    paths = [Path(f"{stem}_confidence.png")]
    if len(analysis.weeks) >= 1:
        paths.append(Path(f"{stem}_weekly.png"))
    if analysis.reviewed_images:
        paths.append(Path(f"{stem}_reviewed.png"))
    return paths


def draw_charts(analysis, json_path: Path, kinds: tuple[str, ...] = ("confidence", "weekly", "reviewed")) -> list[Path]:
    """Confidence histogram per class, weekly trend, reviewed precision/recall (PNG, Agg); the paths
    are ``chart_paths``'s (``kinds``: only these charts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    names = charted_classes(analysis)
    if not names:
        return paths
    stem = json_path.with_suffix("")
    if "confidence" in kinds:
        paths.append(_confidence_chart(plt, analysis, names, stem))
    if len(analysis.weeks) >= 1 and "weekly" in kinds:
        paths.append(_weekly_chart(plt, analysis, names, stem))
    if analysis.reviewed_images and "reviewed" in kinds:
        paths.append(_reviewed_chart(plt, analysis, names, stem))
    return paths


def _confidence_chart(plt, analysis, names: list[str], stem: Path) -> Path:
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    width, height = 4.0 * cols, 2.8 * rows
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    lo, hi = analysis.uncertain
    for ax, name in zip(axes.flat, names):
        hist = class_stats(analysis, name)["confidence_histogram"]
        ax.bar([b + 0.05 for b in hist["bins"][:-1]], hist["counts"], width=0.09, color="#4878a8")
        ax.axvspan(lo, hi, color="#f0a030", alpha=0.2, label="uncertain band")
        ax.set_title(name, fontsize=10)
        ax.set_xlim(0, 1)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("Confidence of detections per class")
    _margins(fig, width, height, left=0.45, right=0.15, bottom=0.35, top=0.6, hspace=0.55, wspace=0.25)
    return _save(fig, Path(f"{stem}_confidence.png"), plt)


def _weekly_chart(plt, analysis, names: list[str], stem: Path) -> Path:
    # legends outside the axes: a legend never covers a line or a bar
    width, height = max(6, 0.6 * len(analysis.weeks) + 3) + 1.6, 6.0
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(width, height), sharex=True)
    x = range(len(analysis.weeks))
    for name in names:
        weeks = class_stats(analysis, name)["by_week"]
        ax1.plot(x, [weeks[w]["mean_confidence"] if weeks[w]["mean_confidence"] is not None else float("nan")
                     for w in analysis.weeks], marker="o", label=name)
        ax2.plot(x, [weeks[w]["per_100_images"] for w in analysis.weeks], marker="o", label=name)
    ax1.set_ylabel("mean confidence")
    ax2.set_ylabel("detections / 100 images")
    ax2.set_xticks(list(x), analysis.weeks, rotation=45, ha="right", fontsize=10)
    _margins(fig, width, height, left=0.8, right=1.7, bottom=0.85, top=0.5, hspace=0.08)
    fig.legend(*ax1.get_legend_handles_labels(), fontsize=9, loc="upper left",
               bbox_to_anchor=(1 - 1.6 / width, 1 - 0.5 / height))
    fig.suptitle("Weekly trend per class")
    return _save(fig, Path(f"{stem}_weekly.png"), plt)


def _reviewed_chart(plt, analysis, names: list[str], stem: Path) -> Path:
    width, height = max(5, 1.1 * len(names)) + 1.2, 3.8
    fig, ax = plt.subplots(figsize=(width, height))
    pos = range(len(names))
    prec = [class_stats(analysis, n)["reviewed"]["precision"] or 0.0 for n in names]
    rec = [class_stats(analysis, n)["reviewed"]["recall"] or 0.0 for n in names]
    ax.bar([p - 0.2 for p in pos], prec, width=0.4, label="precision")
    ax.bar([p + 0.2 for p in pos], rec, width=0.4, label="recall")
    ax.set_xticks(list(pos), names, rotation=30, ha="right", fontsize=10)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Reviewed precision / recall ({analysis.reviewed_images} reviewed images)")
    _margins(fig, width, height, left=0.5, right=1.3, bottom=0.85, top=0.45)
    fig.legend(fontsize=10, loc="upper left", bbox_to_anchor=(1 - 1.2 / width, 1 - 0.45 / height))
    return _save(fig, Path(f"{stem}_reviewed.png"), plt)


def _margins(fig, width: float, height: float, left: float, right: float, bottom: float, top: float,
             hspace: float = 0.2, wspace: float = 0.2) -> None:
    """Fixed margins in inches: one layout pass less than tight/constrained layout (a third of the
    drawing time), the same room for titles, rotated labels and the legends outside the axes."""
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        hspace=hspace, wspace=wspace)


def _save(fig, path: Path, plt) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _draw_in_two(analysis, json_path: Path) -> list[Path]:
    """The confidence chart here, the other two in a forked grandchild at the same time (a machine
    has at least two cores; the parent only waits). If the grandchild fails, they are drawn here."""
    import os

    rest = ("weekly", "reviewed")
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # grandchild
        code = 1
        try:
            from toolkit.data.dataset.parallel import die_with_parent

            die_with_parent(parent)
            draw_charts(analysis, json_path, rest)
            code = 0
        finally:
            os._exit(code)
    draw_charts(analysis, json_path, ("confidence",))
    _, status = os.waitpid(pid, 0)
    if status != 0:
        draw_charts(analysis, json_path, rest)
    return chart_paths(analysis, json_path)


def _child(conn, parent_pid: int) -> None:
    """Helper process: import matplotlib, wait for one job, draw it, answer (status, paths or why).
    It dies with the analyzer, even a SIGKILLed one (no orphaned helper of 65 MB each night)."""
    from toolkit.data.dataset.parallel import die_with_parent

    die_with_parent(parent_pid)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401 - the slow import, done while the parent reads

        job = conn.recv()
        if job is None:
            return
        analysis, json_path = job
        conn.send(("ok", [str(p) for p in _draw_in_two(analysis, Path(json_path))]))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which draws itself
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except Exception:  # noqa: BLE001 - the parent sees EOF instead
            pass
    finally:
        conn.close()


class ChartWorker:
    """``with ChartWorker() as charts: ...; charts.submit(analysis, json_path); ...; charts.result()``."""

    def __init__(self, background: bool = True) -> None:
        self._proc = None
        self._conn = None
        self._job = None
        if not background:
            return
        import multiprocessing as mp

        if "fork" not in mp.get_all_start_methods():
            return
        try:
            ctx = mp.get_context("fork")
            parent, child = ctx.Pipe()
            import os

            self._proc = ctx.Process(target=_child, args=(child, os.getpid()), daemon=True, name="analyzer-charts")
            self._proc.start()
            child.close()
            self._conn = parent
        except OSError as exc:  # no process to spare: draw in this one
            logger.debug("charts drawn in-process (%s)", exc)
            self._proc = self._conn = None

    def __enter__(self) -> "ChartWorker":
        return self

    def submit(self, analysis, json_path: Path) -> list[Path]:
        """Hand the job over; returns the paths that will be written."""
        self._job = (analysis, Path(json_path))
        if self._conn is not None:
            try:
                self._conn.send((analysis, str(json_path)))
            except (OSError, ValueError) as exc:
                logger.debug("chart helper unreachable (%s): drawing in-process", exc)
                self._stop()
        return chart_paths(analysis, Path(json_path))

    def result(self) -> list[Path]:
        """The charts written (drawn here if the helper could not)."""
        if self._job is None:
            return []
        if self._conn is not None:
            try:
                status, payload = self._conn.recv()
            except (EOFError, OSError):
                status, payload = "error", "the helper process ended early"
            self._stop()
            if status == "ok":
                return [Path(p) for p in payload]
            logger.warning("chart helper failed (%s); drawing the charts here", payload)
        return draw_charts(*self._job)

    def _stop(self) -> None:
        if self._conn is not None:
            try:
                if self._job is None:
                    self._conn.send(None)
            except (OSError, ValueError):
                pass
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            self._proc.join(timeout=30)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
            self._proc = None

    def __exit__(self, *exc) -> None:
        self._stop()
