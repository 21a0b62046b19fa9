"""The read-only checks of ``--status``: production vs registry vs sidecar vs archives, each problem
with the command that fixes it. Nothing here changes a file."""
from __future__ import annotations

from toolkit.core.checkpoint_scan import holds_detection_model
from toolkit.core.files import sha256_file
from toolkit.promotion.registry import Registry
from toolkit.promotion.versions import ARCHIVE_RE, not_regular_kind, is_regular


def _does_not_load(registry: Registry) -> str | None:
    """Why the production model does not load as a YOLO detection model (None: it does); read-only."""
    from toolkit.core.errors import UserError
    from toolkit.core.offline import model_class_names

    try:
        model_class_names(registry.workspace.production_model, registry.workspace.ultralytics_config)
    except UserError as exc:
        return str(exc)[:200]
    return None


def registry_notes(registry: Registry) -> list[str]:
    """What --status should say although nothing is inconsistent (a production promoted with --force)."""
    current = registry.production_entry()
    if current is not None and current.get("forced"):
        return [f"production version {current['version']} was promoted although it did not pass the rules "
                f"({current['forced']}); it detects little - train on more images and rerun the pipeline"]
    return []


def registry_problems(registry: Registry) -> list[dict[str, str]]:
    """What is wrong, each as {problem, fix}; nothing is changed."""
    ws, problems = registry.workspace, []

    def add(problem: str, fix: str) -> None:
        problems.append({"problem": problem, "fix": fix})

    repair = f"training_pipeline.py --root {ws.root} --if-new-data repairs it first (or any promotion/rollback)"
    prod_sha = sha256_file(ws.production_model) if ws.production_model.exists() else None
    current = registry.entry_by_sha(prod_sha) if prod_sha else None
    if prod_sha is None and registry.versions:
        add(f"{ws.production_model.name} is missing although {len(registry.versions)} version(s) are registered",
            f"restore one with training_pipeline.py --root {ws.root} --rollback VERSION")
    elif prod_sha is not None and current is None and registry.quarantined(prod_sha) is not None:
        add(f"{ws.production_model.name} does not load as a model (its bytes are kept as "
            f"{registry.quarantine_path(prod_sha)})",
            f"install a version that loads: training_pipeline.py --root {ws.root} --rollback")
    elif prod_sha is not None and current is None and (why := _does_not_load(registry)):
        add(f"{ws.production_model.name} does not load as a model ({why})",
            f"install a version that loads: training_pipeline.py --root {ws.root} --rollback (its bytes are "
            "kept in training/models/quarantine/, never given a version)")
    elif prod_sha is not None and current is None:
        add(f"production (sha256 {prod_sha[:12]}) is not in the registry yet",
            "nothing is lost: it is archived and registered as a version before anything replaces it "
            "(the next comparison, promotion or rollback does it)")
    if current is not None and (why := _does_not_load(registry)):   # versioned by an older toolkit
        add(f"production version {current['version']} does not load as a detection model ({why})",
            f"install a version that loads: training_pipeline.py --root {ws.root} --rollback")
    if current is not None and registry._sidecar_disagrees(current):
        add(f"{ws.production_sidecar.name} does not describe the production model (version {current['version']})",
            repair)
    if prod_sha is not None and not is_regular(ws.production_model):
        add(f"{ws.production_model.name} is {not_regular_kind(ws.production_model)}, not a file of its own",
            f"replace it with a copy: training_pipeline.py --root {ws.root} --rollback VERSION installs one")
    for entry in registry.versions:
        path = ws.models / entry["file"]
        if path.is_symlink() or (path.exists() and not is_regular(path)):
            is_prod = current is not None and current["version"] == entry["version"]
            add(f"the archive of version {entry['version']} ({path.name}) is {not_regular_kind(path)}, "
                "not a copy of its own",
                f"production holds it: {repair} (it archives production again)" if is_prod else
                f"restore {path.name} from a backup; until then version {entry['version']} cannot be restored")
        elif not path.exists():
            is_prod = current is not None and current["version"] == entry["version"]
            add(f"the archive of version {entry['version']} is missing ({path.name})",
                f"production holds it: {repair}" if is_prod else
                f"restore {path.name} from a backup; until then version {entry['version']} cannot be restored")
        elif sha256_file(path) != entry["sha256"]:
            add(f"the archive of version {entry['version']} ({path.name}) was changed after archiving",
                f"restore {path.name} from a backup; it is never restored as it is")
        elif not holds_detection_model(path):  # versioned by an older toolkit: read from its opcodes, not loaded
            add(f"version {entry['version']} ({path.name}) holds no YOLO detection model; it is never installed",
                "nothing to do unless you need it: --rollback refuses it; choose another version")
    by_sha: dict[str, list[str]] = {}
    for entry in registry.versions:
        by_sha.setdefault(entry["sha256"], []).append(entry["version"])
    for versions in by_sha.values():
        if len(versions) > 1:
            add(f"versions {', '.join(versions)} hold the same model",
                f"they are one model; version {versions[0]} is used for it")
    pending = registry.data.get("pending")
    if pending:
        add(f"an interrupted {pending['action']} of version {pending.get('version')}",
            f"{repair}: it is finished if production was replaced, else undone")
    if ws.models.is_dir():
        for path in sorted(ws.models.glob("yolov8_v*.pt")):
            if ARCHIVE_RE.match(path.name) and path.name not in {v["file"] for v in registry.versions} \
                    and not is_regular(path):
                add(f"{path.name} is {not_regular_kind(path)}, not an archive", "delete it; nothing depends on it")
    for path in registry.unregistered_archives():
        twin = registry.entry_by_sha(sha256_file(path))
        if twin is not None:
            add(f"{path.name} is not registered; it is a copy of version {twin['version']}",
                "nothing depends on it: delete it or keep it")
        elif registry.entry(ARCHIVE_RE.match(path.name).group(1)) is not None:
            pass  # its version holds other bytes: reported as a changed archive above
        else:
            add(f"{path.name} is archived but not registered", repair)
    temps = registry.leftover_temp_files()
    if temps:
        add(f"{len(temps)} temp file(s) left by an interrupted copy ({temps[0].name})", repair)
    return problems
