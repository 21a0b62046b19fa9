"""Which images to label next: class quotas, coverage of the line's variety, then the clearest look.

``analyzer.selection`` (training.yaml) picks the mode; each gives an order over the open (not
reviewed) candidate records, best first, with why each was chosen:

- ``confident`` (the default, the best measured - see ``MEASURED``: above random at 90 images,
  level with it at 30 and 240): class quotas, then within each class the typical clusters
  of its images (coverage), and in each cluster the image the production model is surest of (its
  highest detection confidence; ties: the most typical). The case for it: at small budgets a
  typical, clear example of each look teaches more than a doubtful one (Hacohen et al. 2022,
  "Active learning on a budget"); on NEU-DET that paid at 90 images, not at 30 or 240
  (level with random there), and the uncertain picks scored lowest at 30;
- ``hybrid``: the same quotas and clusters, the most uncertain of each cluster's typical half;
- ``diversity``: the same quotas and clusters, the most typical image of each cluster;
- ``uncertainty``: the older order (``toolkit.memory.analysis.candidate_order``): uncertain
  detections first, shared among classes, then images without a detection for missed classes;
- ``random``: a seeded random order (a plant's own baseline).

Class quotas: each candidate belongs to the class of its most confident detection, or to
"no detection" (where missed defects hide). The K picks are shared among these groups in
proportion to group size x (priority score) ** ``analyzer.class_weight_power`` (0: by size, like a
stratified random draw), at least one per group while K allows, so no class is starved.

Coverage (typical clustering, as in TypiClust, Hacohen et al. 2022): the group's
L2-normalised embeddings (``toolkit.memory.embeddings``: the production model's own features) are
split by k-means (k-means++ start, seeded) into as many clusters as the group's quota; a member's
typicality is 1 / its mean distance to its nearest neighbours in the group. Random picks cover
the line's variety; uncertain detections of a few classes cluster on similar images (the
cold-start failure measured in ``benchmarks/results/2026-12-04-cpu-proxy.md``): coverage comes first.

Uncertainty of an image: 1 - its highest detection confidence; an image without any detection
counts as just below the lowest logged confidence (the uncertain band's low end), so it is
uncertain too (a possible miss); ``confident`` takes such an image only where its group has
no detection at all (the "no detection" group: its most typical image).

After the K primary picks (one per cluster), the order goes on round-robin through the clusters'
next members, so the export can skip near-duplicates (perceptual hash) and missing files and still
fill K.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("confident", "hybrid", "diversity", "uncertainty", "random")
COVERED = ("confident", "hybrid", "diversity")   # the modes that cluster the production model's embeddings
NEIGHBOURS = 20            # typicality: mean distance to this many nearest neighbours (fewer in small groups)
KMEANS_ITERS = 30
KMEANS_STARTS = 4          # k-means++ starts; the lowest inertia wins (one start can merge two rare looks)
NONE_GROUP = "(no detection)"


# What each mode's picks were worth against random picks in benchmarks/label_efficiency.py (NEU-DET,
# CPU proxy; the newest result in benchmarks/results/): said with every export, so no plant takes the
# picks for more than they are. A plant's own line may differ: compare the modes on it.
MEASURED = {   # benchmarks/results/2026-12-06-cpu-proxy.md: test mAP50-95 at K 30 / 90 / 240; confident 10 seeds, the others 3, random 20 draws
    "confident": "test mAP50-95 0.101 / 0.123 / 0.149 at K 30 / 90 / 240 against random picks' 0.103 / 0.114 / 0.149: "
                 "its images were worth 0.95x / 1.42x / 1.00x as many random ones - a gain at 90 images (about 4 "
                 "standard errors), level with random at 30 and 240 within the noise (no mode beat random at 30); in a "
                 "256-px proxy (2026-12-06-cpu-proxy-256px.md, 5 seeds / 5 draws) 1.39x / 1.29x / 0.95x, none of it "
                 "beyond the noise yet",
    "hybrid": "test mAP50-95 0.101 / 0.114 / 0.149 at K 30 / 90 / 240 against random picks' 0.103 / 0.114 / 0.149: "
              "its images were worth 0.93x / 0.96x / 1.01x as many random ones - no better than random",
    "diversity": "test mAP50-95 0.095 / 0.115 / 0.148 at K 30 / 90 / 240 against random picks' 0.103 / 0.114 / 0.149: "
                 "worth 0.79x / 1.03x / 0.99x as many random images - no better than random, below it at K 30",
    "uncertainty": "test mAP50-95 0.090 / 0.117 / 0.145 at K 30 / 90 / 240 against random picks' 0.103 / 0.114 / 0.149: "
                   "worth 0.63x / 1.12x / 0.93x as many random images - clearly below random at K 30",
    "random": "the baseline the other modes are measured against; no mode beat it at K 30",
}


def evidence(mode: str) -> str:
    """One line: what ``mode``'s picks were worth against random ones, with figures."""
    return f"{mode} selection, measured on NEU-DET (CPU proxy, benchmarks/results/): {MEASURED.get(mode, 'not measured')}"


@dataclass
class Pick:
    record: int
    reason: str
    group: str = ""
    cluster: int | None = None        # cluster number within the selection (1-based), None: not clustered
    distance: float | None = None     # distance to the cluster's centre (L2-normalised embeddings)
    typicality: float | None = None
    uncertainty: float | None = None


def image_uncertainty(max_conf: np.ndarray, floor: float) -> np.ndarray:
    """1 - the highest confidence per image; NaN (no detection) counts as ``floor``."""
    conf = np.where(np.isnan(max_conf), floor, max_conf)
    return np.clip(1.0 - conf, 0.0, 1.0)


def quotas(sizes: dict[str, int], weights: dict[str, float], k: int) -> dict[str, int]:
    """K shared among groups by size x weight (largest remainder), at least 1 per group while K allows,
    never more than a group holds."""
    groups = [g for g in sizes if sizes[g] > 0]
    out = {g: 0 for g in sizes}
    k = min(k, sum(sizes[g] for g in groups))
    if k <= 0 or not groups:
        return out
    if k >= len(groups):
        for g in groups:
            out[g] = 1
    left = k - sum(out.values())
    while left > 0:
        open_ = [g for g in groups if out[g] < sizes[g]]
        mass = {g: sizes[g] * max(weights.get(g, 1.0), 1e-6) for g in open_}
        total = sum(mass.values())
        share = {g: left * mass[g] / total for g in open_}
        add = {g: min(int(share[g]), sizes[g] - out[g]) for g in open_}
        if sum(add.values()) == 0:   # hand out the remainders, largest first (ties by name)
            for g in sorted(open_, key=lambda g: (-(share[g] - int(share[g])), g))[:left]:
                add[g] = 1
        for g, n in add.items():
            out[g] += n
        left = k - sum(out.values())
    return out


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = KMEANS_ITERS, starts: int = KMEANS_STARTS) -> tuple[np.ndarray, np.ndarray]:
    """(labels, centres) of k-means: the lowest-inertia of ``starts`` k-means++ starts; deterministic for a seed."""
    best = None
    for s in range(starts):
        labels, centres = _kmeans_once(x, k, seed * 1009 + s, iters)
        inertia = float(((x - centres[labels]) ** 2).sum())
        if best is None or inertia < best[0] - 1e-9:
            best = (inertia, labels, centres)
    return best[1], best[2]


def _kmeans_once(x: np.ndarray, k: int, seed: int, iters: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        i = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        centres.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    c = np.stack(centres)
    labels = np.zeros(n, dtype=np.int64)
    for it in range(iters):
        dist = ((x[:, None, :] - c[None, :, :]) ** 2).sum(2) if n * k < 4_000_000 else _sqdist(x, c)
        new = dist.argmin(1)
        if it and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(0)
    return labels, c


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def typicality(x: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """1 / mean distance to the nearest ``neighbours`` others (blockwise, so thousands fit in memory)."""
    n = len(x)
    if n <= 1:
        return np.ones(n)
    m = min(neighbours, n - 1)
    out = np.empty(n)
    for s in range(0, n, 1024):
        d = np.sqrt(_sqdist(x[s:s + 1024], x))
        d[np.arange(len(d)), np.arange(s, s + len(d))] = np.inf
        near = np.partition(d, m - 1, axis=1)[:, :m]
        out[s:s + len(d)] = 1.0 / (near.mean(1) + 1e-9)
    return out


def covered_order(x: np.ndarray, uncertainty: np.ndarray, k: int, seed: int, mode: str) -> list[tuple[int, int, float, float]]:
    """Within one group: rows of ``x`` in pick order, each (row, cluster, distance, typicality).

    k typical clusters (k-means); the first k rows are one per cluster (largest cluster first): the
    member the model is surest of, ties by typicality (``confident``), the most typical member
    (``diversity``) or the most uncertain of the cluster's more typical half (``hybrid``), with its
    distance to the cluster's centre; then the clusters' other members round-robin, in the same
    preference.
    """
    n = len(x)
    if n == 0 or k <= 0:
        return []
    labels, centres = kmeans(x, k, seed)
    typ = typicality(x)
    dist = np.sqrt(((x - centres[labels]) ** 2).sum(1))
    queues = []
    for j in range(len(centres)):
        members = np.flatnonzero(labels == j)
        if not len(members):
            continue
        by_typ = members[np.lexsort((members, -typ[members]))]
        if mode == "confident":   # the clearest example of the look: least uncertain, then most typical
            order = members[np.lexsort((members, -typ[members], uncertainty[members]))]
        elif mode == "hybrid":
            core = by_typ[: max(1, (len(by_typ) + 1) // 2)]
            rest = by_typ[len(core):]
            core = core[np.lexsort((core, -uncertainty[core]))]
            rest = rest[np.lexsort((rest, -uncertainty[rest]))]
            order = np.concatenate([core, rest])
        else:
            order = by_typ
        queues.append((j, list(order)))
    queues.sort(key=lambda q: (-len(q[1]), q[1][0]))
    out = []
    depth = 0
    while any(depth < len(q) for _, q in queues):
        for j, q in queues:
            if depth < len(q):
                r = int(q[depth])
                out.append((r, j, float(dist[r]), float(typ[r])))
        depth += 1
    return out


def select(records: np.ndarray, groups: list[str], vectors: np.ndarray | None, uncertainty: np.ndarray,
           weights: dict[str, float], k: int, mode: str, seed: int = 0) -> list[Pick]:
    """Candidate ``records`` (record numbers) in pick order with their reasons.

    ``groups[i]``: the class group of records[i]; ``vectors``: their embeddings (rows with NaN,
    e.g. unreadable images, go last); ``weights``: the quota weight of each group.
    """
    if mode not in COVERED + ("random",):
        raise ValueError(f"selection mode {mode!r}: one of {', '.join(COVERED)}, random here")
    n = len(records)
    if mode == "random":
        order = np.random.default_rng(seed).permutation(n)
        return [Pick(int(records[i]), f"random pick (seed {seed})", groups[i],
                     uncertainty=round(float(uncertainty[i]), 4)) for i in order]
    ok = ~np.isnan(vectors).any(1) if vectors is not None and vectors.size else np.zeros(n, bool)
    names = sorted(set(groups))
    members = {g: np.array([i for i in range(n) if groups[i] == g and ok[i]], dtype=np.int64) for g in names}
    quota = quotas({g: len(members[g]) for g in names}, weights, k)
    per_group: dict[str, list[Pick]] = {}
    cluster_base = 0
    for g in names:
        rows = members[g]
        if not len(rows):
            continue
        q = max(1, quota[g])
        got = covered_order(vectors[rows], uncertainty[rows], q, seed, mode)
        picks = []
        for r, j, dist, typ in got:
            i = int(rows[r])
            u = float(uncertainty[i])
            what = {"confident": "the one the model is surest of", "hybrid": "most uncertain of its typical members",
                    "diversity": "its most typical member"}[mode]
            why = (f"{g}: cluster {j + 1} of {q} in this class ({what}; uncertainty {u:.2f}, "
                   f"distance to the centre {dist:.2f})")
            picks.append(Pick(int(records[i]), why, g, cluster_base + j + 1, round(dist, 4), round(typ, 4), round(u, 4)))
        per_group[g] = picks
        cluster_base += q
    out: list[Pick] = []
    # primary picks: each group's quota, groups interleaved by their share of the picks so far
    heads = {g: 0 for g in per_group}
    taken = {g: 0 for g in per_group}
    while len(out) < k and any(heads[g] < min(quota[g], len(per_group[g])) for g in per_group):
        live = [g for g in per_group if heads[g] < min(quota[g], len(per_group[g]))]
        g = min(live, key=lambda g: ((taken[g] + 1) / max(quota[g], 1), g))
        out.append(per_group[g][heads[g]])
        heads[g] += 1
        taken[g] += 1
    # backups (for near-duplicates and missing files): the rest, groups round-robin
    while any(heads[g] < len(per_group[g]) for g in per_group):
        for g in per_group:
            if heads[g] < len(per_group[g]):
                out.append(per_group[g][heads[g]])
                heads[g] += 1
    seen = {p.record for p in out}
    for i in range(n):  # no embedding (unreadable): last
        if int(records[i]) not in seen:
            out.append(Pick(int(records[i]), f"{groups[i]}: no embedding (image unreadable)", groups[i],
                            uncertainty=round(float(uncertainty[i]), 4)))
    return out


# --- over a memory bank ------------------------------------------------------------------------

MAX_POOL = 5000   # more open candidates than this: a seeded random sample of them is embedded and clustered


def bank_picks(bank, analysis, k: int, mode: str, power: float, seed: int, image_path, embed) -> tuple[list[Pick], dict]:
    """The open (not reviewed) records of ``bank`` in pick order for ``confident`` / ``hybrid`` / ``diversity`` / ``random``.

    ``image_path(record) -> Path | None`` gives a record's image when it may be opened (an image
    file that exists), ``embed(paths) -> (vectors, info)`` their embeddings. Returns the picks and
    what the selection was based on (candidates, groups, quotas, embedding cost).
    """
    n_rec = bank.records
    reviewed = np.zeros(n_rec, dtype=bool)
    if bank.reviews:
        reviewed[np.fromiter(bank.reviews.keys(), dtype=np.int64)] = True
    max_conf = np.full(n_rec, np.nan)
    top_cls = np.full(n_rec, -1, dtype=np.int64)
    rec = bank.det_record()
    if len(rec):
        order = np.lexsort((bank.det_conf, rec))       # per record, highest confidence last
        last = np.r_[rec[order][1:] != rec[order][:-1], True]
        max_conf[rec[order][last]] = bank.det_conf[order][last]
        top_cls[rec[order][last]] = bank.det_cls[order][last]
    records = np.flatnonzero(~reviewed)
    sampled = len(records) > MAX_POOL
    if sampled:
        records = np.sort(np.random.default_rng(seed).choice(records, MAX_POOL, replace=False))
    groups = [bank.classes[int(top_cls[r])] if top_cls[r] >= 0 else NONE_GROUP for r in records]
    lo = analysis.uncertain[0]
    uncertainty = image_uncertainty(max_conf[records], lo)
    scores = {p["class"]: max(float(p["score"]), 0.01) for p in analysis.priorities}
    weights = {g: scores.get(g, 1.0) ** power for g in set(groups)}
    if NONE_GROUP in weights:
        from toolkit.memory.priorities import missed_points

        missed = [missed_points(st) for st in analysis.classes.values()]
        base = max(missed) if missed and max(missed) > 0 else (sum(scores.values()) / len(scores) if scores else 1.0)
        weights[NONE_GROUP] = max(base, 0.01) ** power
    info = {"mode": mode, "candidates": int(len(records)), "sampled_from": int((~reviewed).sum()) if sampled else None,
            "groups": {g: groups.count(g) for g in sorted(set(groups))}}
    vectors = None
    if mode != "random" and len(records):
        paths = [image_path(int(r)) for r in records]
        vectors, embed_info = embed(paths)
        info["embedding"] = embed_info
    picks = select(records, groups, vectors, uncertainty, weights, k, mode, seed)
    info["quotas"] = quotas({g: groups.count(g) for g in sorted(set(groups))}, weights, k) if mode != "random" else None
    return picks, info
