"""The import plan: for every checked image, whether it is added and to which split. Writes nothing.

Rejected: any problem of its own or an unknown class. Not added: an exact duplicate of a managed
image, or the same bytes *and* labels twice in the source. Near-duplicate groups (union-find)
follow a managed member's split, else the source's (``--keep-split``), else the stratified
assignment.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from toolkit.core.datafile import read_class_names
from toolkit.data.dataset.checks import CheckedImage
from toolkit.data.dataset.groups import looks_grouped, lot_balance, lot_summary
from toolkit.data.dataset.manifest import split_counts
from toolkit.data.dataset.store import managed_name
from toolkit.data.dataset.stratify import BACKGROUND, SplitGroup, UnionFind, assign_splits
from toolkit.core.errors import UserError
from toolkit.data.labels.source import Problem, SourceBatch, short
from toolkit.core.layout import SPLITS, Workspace
from toolkit.core.reports import utc_now_iso

Accepted = tuple[CheckedImage, list, str]  # (checked image, YOLO rows with class ids, batch id)


@dataclass
class ImportPlan:
    """What an import will do: new manifest entries and everything the report lists."""

    classes: list[str]
    entries: list[dict] = field(default_factory=list)          # new manifest image entries
    tasks: list[tuple[CheckedImage, dict]] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    near: list[dict] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)            # lots (dataset.group_by): split, images
    notes: list[str] = field(default_factory=list)
    difficult: int = 0
    bad_by_batch: dict[str, tuple[int, int]] = field(default_factory=dict)


def resolve_classes(workspace: Workspace, manifest: dict | None, batches: Sequence[SourceBatch],
                     class_map: dict[str, str]) -> tuple[list[str], bool]:
    """The dataset's classes (dataset.yaml, else the manifest, else the sources) and whether they are new."""
    if workspace.dataset_yaml.exists():
        classes = read_class_names(workspace.dataset_yaml)
        known = (manifest or {}).get("classes") or []
        if known and list(classes[:len(known)]) != list(known):
            raise UserError(f"{workspace.dataset_yaml} lists classes {classes} but the managed dataset was built with "
                            f"{known}; restore dataset.yaml (classes may only be appended at the end)")
        return list(classes), False
    if manifest and manifest.get("classes"):
        return list(manifest["classes"]), False
    names: list[str] = []
    for batch in batches:
        source_names = list(batch.class_names or [])
        if not source_names:
            for item in batch.images:
                for b in item.boxes:
                    if isinstance(b.cls, int):
                        raise UserError(f"{batch.root}: YOLO labels without class names and no dataset.yaml; add a "
                                        "classes.txt (one name per line, in id order), or give setup_training.py the class names "
                                        "(its --classes flag, in id order)")
                    source_names.append(class_map.get(b.cls, b.cls))
            # VOC names have no order of their own: sorted, so the same set always gives the same
            # ids (NEU-DET's first-seen order would differ from every NEU model's alphabetical one).
            source_names = sorted(set(source_names))
        for n in source_names:
            mapped = class_map.get(n, n)
            if mapped not in names:
                names.append(mapped)
    if not names:
        raise UserError("no class names found in the source(s) and no dataset.yaml; set the workspace up first with "
                        "setup_training.py, giving the class names in id order with its --classes flag")
    return names, True


def class_problems(checked: CheckedImage, class_index: dict[str, int], class_map: dict[str, str],
                    classes: Sequence[str]) -> tuple[list[Problem], list[tuple[int, float, float, float, float]]]:
    rows, problems, unknown = [], [], []
    for cls, xc, yc, w, h in checked.boxes:
        if isinstance(cls, int):
            if 0 <= cls < len(classes):
                rows.append((cls, xc, yc, w, h))
            else:
                problems.append(f"class id {cls} out of range (dataset.yaml has 0-{len(classes) - 1})")
            continue
        name = class_map.get(cls, cls)
        if name in class_index:
            rows.append((class_index[name], xc, yc, w, h))
        elif cls not in unknown:
            unknown.append(cls)
    for cls in unknown:
        import difflib

        closest = (difflib.get_close_matches(str(cls), list(classes), n=1, cutoff=0.0) or list(classes) or ["?"])[0]
        problems.append(f"unknown class '{short(cls)}' (dataset classes: {', '.join(classes)}); image left out whole - "
                        f"if it is one of those, rename it, e.g. with --map {short(cls)}={closest}, or add the class "
                        "with setup_training.py")
    where = checked.source.label or checked.source.image
    return [Problem(where, p if "left out" in p else f"{p}; image {checked.source.image.name} left out")
            for p in problems], rows


def plan_import(batches: Sequence[tuple[SourceBatch, str]], checked: Mapping[Path, CheckedImage],
                 already: Mapping[Path, dict], manifest: dict, classes: list[str], class_map: dict[str, str],
                 ratios: dict[str, float], bits: int, keep_split: bool,
                 lots: Mapping[Path, str] | None = None) -> ImportPlan:
    """Decide, for every checked image, whether it is added and to which split (see the module).

    ``lots``: the lot of each source image (``dataset.group_by``); a lot shares one split, like a
    near-duplicate group, and follows the split of its images imported before."""
    plan = ImportPlan(classes)
    accepted = _accept_images(plan, batches, checked, already, manifest, class_map)
    lot_of = {i: lots[a[0].source.image] for i, a in enumerate(accepted) if lots and a[0].source.image in lots}
    split_of, to_stratify, left_out = _place_near_duplicates(plan, accepted, manifest, bits, keep_split, lot_of)
    _stratify(split_of, to_stratify, accepted, manifest, classes, ratios)
    if lot_of:
        plan.groups = lot_summary({i: k for i, k in lot_of.items() if i not in left_out}, split_of)
    elif len(accepted) >= 10:
        hint = looks_grouped([a[0].phash for a in accepted], [split_of.get(i, "train") for i in range(len(accepted))])
        if hint:
            plan.notes.append(hint)
    for item in plan.near:
        if item["split"] is None:
            item["split"] = split_of[item.pop("_index")]
        item.pop("_index", None)
    _add_entries(plan, accepted, split_of, left_out, manifest, lot_of)
    if lot_of:
        plan.notes += lot_balance(list(manifest["images"]) + plan.entries, ratios)
    return plan


def _accept_images(plan: ImportPlan, batches: Sequence[tuple[SourceBatch, str]], checked: Mapping[Path, CheckedImage],
                   already: Mapping[Path, dict], manifest: dict, class_map: dict[str, str]) -> list[Accepted]:
    """Every image without a problem and not an exact duplicate; the rest goes into the plan's lists."""
    classes = plan.classes
    class_index = {c: i for i, c in enumerate(classes)}
    managed_by_sha = {e["sha256"]: e for e in manifest["images"]}
    accepted: list[Accepted] = []
    seen_new: dict[str, tuple[Path, list]] = {}
    for batch, batch_id in batches:
        bad = len(batch.problems)
        plan.rejected += batch.problems
        for item in batch.images:
            if item.image in already:
                plan.duplicates.append({"path": str(item.image), "duplicate_of": already[item.image]["file"],
                                        "kind": "exact (already imported, unchanged)"})
                continue
            c = checked[item.image]
            class_probs, rows = class_problems(c, class_index, class_map, classes) if c.ok or c.boxes else ([], [])
            if not c.ok or class_probs:
                bad += 1
                plan.rejected += list(c.problems) + class_probs
                continue
            plan.warnings += c.warnings
            if c.sha256 in managed_by_sha:
                managed = managed_by_sha[c.sha256]
                same = dict(Counter(classes[r[0]] for r in rows)) == (managed.get("boxes") or {})
                plan.duplicates.append({"path": str(item.image), "duplicate_of": managed["file"],
                                        "kind": "exact" if same else "exact, but labelled differently: the managed "
                                                                     "labels are kept (not updated)"})
                continue
            twin = seen_new.get(c.sha256)
            if twin is not None and sorted(twin[1]) == sorted(rows):
                plan.duplicates.append({"path": str(item.image), "duplicate_of": str(twin[0]),
                                        "kind": "exact (same bytes and labels twice in the source)"})
                continue
            if twin is not None:
                # Same pixels, other labels (NEU-DET: patches_101 / patches_105): both are kept, as
                # the labeller made two records; near-duplicate grouping puts them in one split.
                plan.warnings.append(Problem(item.image, f"same pixels as {twin[0]} but labelled differently: "
                                                         "both kept (as near-duplicates); check which labels are right"))
            seen_new.setdefault(c.sha256, (item.image, rows))
            accepted.append((c, rows, batch_id))
        plan.bad_by_batch[str(batch.root)] = (bad, len(batch.images) + len(batch.problems))
    return accepted


def _place_near_duplicates(plan: ImportPlan, accepted: Sequence[Accepted], manifest: dict, bits: int,
                           keep_split: bool, lot_of: Mapping[int, str]
                           ) -> tuple[dict[int, str], list[list[int]], set[int]]:
    """Group near-duplicates (union-find over new images); a group touching managed images follows
    their split, one touching several splits is left out, one the source places keeps that split
    (``keep_split``). Returns the splits fixed so far, the groups left to stratify, the left-out."""
    from toolkit.data.phash import near_duplicate_pairs, parse_phash  # numpy: loaded when there is work

    old = [e for e in manifest["images"] if parse_phash(e.get("phash")) is not None]
    within, across = near_duplicate_pairs([c.phash for c, _, _ in accepted],
                                          [parse_phash(e["phash"]) for e in old], bits)
    uf = UnionFind(len(accepted))
    for i, j in within:
        uf.union(i, j)
    linked: dict[int, list[dict]] = defaultdict(list)
    for i, k in across:
        linked[i].append(old[k])
    # a lot is one group: its new images together, and with its images imported before
    first_of_lot: dict[str, int] = {}
    for i, lot in lot_of.items():
        uf.union(first_of_lot.setdefault(lot, i), i)
    managed_lots: dict[str, list[dict]] = defaultdict(list)
    for e in manifest["images"]:
        if e.get("group"):
            managed_lots[e["group"]].append(e)
    split_of: dict[int, str] = {}
    to_stratify: list[list[int]] = []
    left_out: set[int] = set()

    def path(i: int) -> str:
        return str(accepted[i][0].source.image)

    neighbours: dict[int, set[int]] = defaultdict(set)
    for i, j in within:
        neighbours[i].add(j)
        neighbours[j].add(i)
    for members in uf.groups():
        managed = [e for i in members for e in linked.get(i, [])]
        splits_there = sorted({e["split"] for e in managed}, key=SPLITS.index)
        paths = [path(i) for i in members]
        lots = sorted({lot_of[i] for i in members if i in lot_of})
        lot_splits = {lot: got[0] for lot in lots
                      if (got := _lot_split(plan, accepted[members[0]][0].source.image, [lot], managed_lots))}
        if lot_splits:  # a lot keeps the split it has: a near-copy of another split's image is left out
            _place_by_lot(plan, accepted, members, lot_of, lot_splits, linked, neighbours, split_of, left_out)
            continue
        if len(splits_there) > 1:
            for i in members:
                plan.duplicates.append({"path": path(i), "kind": "near (conflict)",
                                        "duplicate_of": ", ".join(sorted({e["file"] for e in managed}))})
                left_out.add(i)
            plan.notes.append(f"{len(members)} image(s) left out: near-duplicates of managed images in several "
                              f"splits ({', '.join(splits_there)}), adding them would leak between splits")
            continue
        if splits_there:
            for i in members:
                wanted = accepted[i][0].source.split if keep_split else None
                if wanted and wanted != splits_there[0]:
                    plan.warnings.append(Problem(accepted[i][0].source.image, f"source split '{wanted}' overridden: "
                                                 f"near-duplicate of a managed {splits_there[0]} image"))
                split_of[i] = splits_there[0]
            near_files = sorted({e["file"] for e in managed})
            for i in members if managed else ():  # a lot's members are listed as a lot, not as near-copies
                plan.near.append({"path": path(i), "split": splits_there[0],
                                  "near": near_files + [p for p in paths if p != path(i)]})
            continue
        if keep_split and any(accepted[i][0].source.split for i in members):
            given = Counter(accepted[i][0].source.split for i in members if accepted[i][0].source.split)
            if len(given) > 1:
                plan.warnings.append(Problem(accepted[members[0]][0].source.image,
                                             f"near-duplicates across the source's splits ({', '.join(sorted(given))}): "
                                             "kept as the source says (--keep-split), but they leak between splits: "
                                             + ", ".join(paths[:6])))
            common = given.most_common(1)[0][0]
            for i in members:
                split_of[i] = accepted[i][0].source.split or common
        else:
            to_stratify.append(members)
        if len(members) > 1 and not lots:
            for i in members:
                plan.near.append({"path": path(i), "split": None, "_index": i,
                                  "near": [p for p in paths if p != path(i)]})
    return split_of, to_stratify, left_out


def _place_by_lot(plan: ImportPlan, accepted: Sequence[Accepted], members: Sequence[int], lot_of: Mapping[int, str],
                  lot_splits: Mapping[str, str], linked: Mapping[int, list[dict]], neighbours: Mapping[int, set[int]],
                  split_of: dict[int, str], left_out: set[int]) -> None:
    """A group holding lots imported before: each image goes to its lot's split (an image of no known
    lot to the split most of the group's lots hold); an image that is a near-copy of a managed image,
    or of a new image placed, in another split is left out as a duplicate, with a note - a lot
    never spans two splits, and no near-copy crosses between them."""
    common = Counter(lot_splits.values()).most_common(1)[0][0]
    target = {i: lot_splits.get(lot_of.get(i, ""), common) for i in members}
    # members of a known lot first: a near-copy pair across splits leaves out the image of no known lot
    for i in sorted(members, key=lambda i: (lot_of.get(i) not in lot_splits, i)):
        crossing = sorted({e["file"] for e in linked.get(i, []) if e["split"] != target[i]}
                          | {str(accepted[j][0].source.image) for j in neighbours.get(i, ())
                             if j in split_of and split_of[j] != target[i]})
        if crossing:
            image = accepted[i][0].source.image
            plan.duplicates.append({"path": str(image), "kind": f"near (of another split's image; its lot is in "
                                                                f"{target[i]})", "duplicate_of": ", ".join(crossing[:5])})
            plan.notes.append(f"{image.name} left out: it is a near-copy of {', '.join(crossing[:3])} in another "
                              f"split, and its lot {lot_of.get(i, '(none)')} is in {target[i]}; adding it would "
                              "leak between splits")
            left_out.add(i)
            continue
        wanted = accepted[i][0].source.split
        if wanted and wanted != target[i]:
            plan.warnings.append(Problem(accepted[i][0].source.image, f"source split '{wanted}' overridden: its lot "
                                                                      f"is in {target[i]}"))
        split_of[i] = target[i]
        near_files = sorted({e["file"] for e in linked.get(i, [])})
        if near_files:
            plan.near.append({"path": str(accepted[i][0].source.image), "split": target[i], "near": near_files})


def _lot_split(plan: ImportPlan, image: Path, lots: Sequence[str], managed_lots: Mapping[str, list[dict]]) -> list[str]:
    """The split of the lot's images imported before ([]: none). A lot that an import before
    ``group_by`` spread over several splits keeps them (images never move); its new images join
    the split holding most of it, with a warning."""
    counts = Counter(e["split"] for lot in lots for e in managed_lots.get(lot, []))
    if not counts:
        return []
    if len(counts) > 1:
        plan.warnings.append(Problem(image, f"lot {', '.join(lots)} already spans {', '.join(sorted(counts))} (imported "
                                            "before dataset.group_by was set; images never move): its new images "
                                            f"join {counts.most_common(1)[0][0]}"))
    return [counts.most_common(1)[0][0]]


def _stratify(split_of: dict[int, str], to_stratify: Sequence[list[int]], accepted: Sequence[Accepted],
              manifest: dict, classes: Sequence[str], ratios: Mapping[str, float]) -> None:
    """Stratify the groups left, on top of the managed images and the images placed already."""
    counts = split_counts(manifest, classes)
    existing = {s: {c: counts["class_images"].get(c, {}).get(s, 0) for c in classes} for s in SPLITS}
    for s in SPLITS:
        existing[s][BACKGROUND] = counts["background"][s]
    existing_images = dict(counts["images"])

    def labels_of(i: int) -> Counter:
        names = {classes[r[0]] for r in accepted[i][1]}
        return Counter(names or {BACKGROUND})

    for i, s in split_of.items():
        for c in labels_of(i):
            existing[s][c] = existing[s].get(c, 0) + 1
        existing_images[s] += 1
    groups = []
    for members in to_stratify:
        labels: Counter = Counter()
        for i in members:
            labels.update(labels_of(i))
        groups.append(SplitGroup(members, labels, min(accepted[i][0].sha256 for i in members)))
    for g, s in zip(groups, assign_splits(groups, existing, existing_images, ratios)):
        for i in g.members:
            split_of[i] = s


def _add_entries(plan: ImportPlan, accepted: Sequence[Accepted], split_of: Mapping[int, str], left_out: set[int],
                 manifest: dict, lot_of: Mapping[int, str]) -> None:
    """A manifest entry (unique managed name) and a copy task for every image that is added."""
    from toolkit.data.phash import format_phash

    classes = plan.classes
    now = utc_now_iso()
    taken = {Path(e["file"]).stem for e in manifest["images"]}
    for i, (c, rows, batch_id) in enumerate(accepted):
        if i in left_out:
            continue
        lot = lot_of.get(i)
        split = split_of[i]
        suffix = ".jpg" if c.reencode and c.kind == "jpeg" else None
        name = managed_name(c.source.image, c.sha256, suffix)
        n = 1
        while Path(name).stem in taken:  # same stem and bytes from two folders: still two files
            n += 1
            name = managed_name(c.source.image, c.sha256, suffix, n)
        taken.add(Path(name).stem)
        boxes = Counter(classes[r[0]] for r in rows)
        entry = {"file": f"images/{split}/{name}", "label": f"labels/{split}/{Path(name).stem}.txt",
                 "sha256": c.sha256, "phash": format_phash(c.phash), "source": str(c.source.image),
                 "label_source": str(c.source.label) if c.source.label else None,
                 "source_size": c.size, "source_mtime_ns": c.mtime_ns, "batch": batch_id, "split": split,
                 "boxes": dict(sorted(boxes.items())), "difficult": c.difficult,
                 "width": c.width, "height": c.height, "added_at": now}
        if lot:
            entry["group"] = lot
        if c.reencode:
            entry["reencoded"] = c.reencode
        plan.difficult += c.difficult
        plan.entries.append(entry)
        plan.tasks.append((c, {"rows": rows, **entry}))
