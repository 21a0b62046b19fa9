"""Which split each new image goes to: groups that must stay together, iterative stratification.

- an image keeps its split forever, so a test image never becomes a training image;
- near-duplicates (DCT perceptual hash within ``near_duplicate_bits``) form one group and share
  one split (union-find);
- new groups are placed so that every class keeps the configured ratios (iterative
  stratification, rarest class first, multi-label images handled).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from toolkit.core.layout import SPLITS

BACKGROUND = "__background__"  # pseudo-class so defect-free images are stratified too


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            out[self.find(i)].append(i)
        return list(out.values())


# --------------------------------------------------------------------------- split

@dataclass
class SplitGroup:
    """Images that must share a split (near-duplicates), with the classes they carry."""

    members: list[int]
    labels: Counter = field(default_factory=Counter)  # class -> images of the group that have it
    key: str = ""                                     # stable order (content hash)


def assign_splits(groups: Sequence[SplitGroup], existing: Mapping[str, Mapping[str, int]],
                  existing_images: Mapping[str, int], ratios: Mapping[str, float]) -> list[str]:
    """A split per group: iterative stratification (Sechidis et al. 2011) on top of what exists.

    For each class the wanted count per split is ``ratio x (existing + new)`` minus what the split
    already has; classes are served rarest first and each group goes to the split that still wants
    that class most (ties: the split that wants the most images). Existing images never move.
    ``existing``: split -> class -> images; ``existing_images``: split -> images.
    """
    splits = [s for s in SPLITS if ratios.get(s, 0) > 0]
    total_ratio = sum(ratios[s] for s in splits)
    share = {s: ratios[s] / total_ratio for s in splits}
    new_per_class: Counter = Counter()
    for g in groups:
        new_per_class.update(g.labels)
    all_classes = set(new_per_class)
    want: dict[str, dict[str, float]] = {}
    for s in splits:
        want[s] = {}
        for c in all_classes:
            total_c = sum(existing.get(t, {}).get(c, 0) for t in SPLITS) + new_per_class[c]
            want[s][c] = share[s] * total_c - existing.get(s, {}).get(c, 0)
    n_total = sum(existing_images.get(s, 0) for s in SPLITS) + sum(len(g.members) for g in groups)
    want_images = {s: share[s] * n_total - existing_images.get(s, 0) for s in splits}
    order = {s: i for i, s in enumerate(SPLITS)}

    result: list[str | None] = [None] * len(groups)
    remaining = set(range(len(groups)))
    by_class: dict[str, list[int]] = defaultdict(list)
    for gi in sorted(range(len(groups)), key=lambda i: groups[i].key):
        for c in groups[gi].labels:
            by_class[c].append(gi)
    while remaining:
        left: Counter = Counter()
        for gi in remaining:
            left.update(groups[gi].labels)
        if not left:  # groups without any label (cannot happen: background is a label) - be safe
            cls = None
            todo = sorted(remaining, key=lambda i: groups[i].key)
        else:
            cls = min(left, key=lambda c: (left[c], c))
            todo = [gi for gi in by_class[cls] if gi in remaining]
        for gi in todo:
            g = groups[gi]
            best = max(splits, key=lambda s: ((want[s][cls] if cls else 0.0), want_images[s], -order[s]))
            result[gi] = best
            for c, n in g.labels.items():
                want[best][c] -= n
            want_images[best] -= len(g.members)
            remaining.discard(gi)
    return [r or "train" for r in result]
