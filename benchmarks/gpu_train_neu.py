"""NEU-DET on a GPU through the toolkit: train on the fixed split, score on its test split.

Self-contained: give it the NEU-DET folder (VOC files + splits/*.txt) and it builds the YOLO
dataset of the fixed split (train / val / test by image stem) in a fresh workspace, trains with
``train_yolov8.run`` (the toolkit's default recipe: training.yaml's augmentation for metal), then
scores best.pt on the test split with ultralytics' own ``val`` (conf 0.001, iou 0.7, the settings
the reference figures were measured with) and prints test mAP50 / mAP50-95 and the time.

``--plain`` trains plain ultralytics (its default augmentation) with the same epochs / imgsz /
batch / start in the same run, so the two can be compared as a ratio on one machine.

Reference (plain ultralytics 8.4.190 on one H200, 640 px, batch 64): YOLOv8n from scratch on
the 1440 training images, 100 epochs: test 0.786 / 0.453 in 231 s; fine-tuning neu_v1.0_half.pt,
50 epochs: 0.748 / 0.435 in 124 s.

On a machine without network, install the wheels first (benchmarks/gpu_train_neu.sh does it).

Usage:
    python benchmarks/gpu_train_neu.py --neu ../shared/datasets/NEU-DET                 # 100 ep, 640, b64
    python benchmarks/gpu_train_neu.py --from ../shared/models/neu_v1.0_half.pt --epochs 50
    python benchmarks/gpu_train_neu.py --epochs 1 --imgsz 64 --limit 60 --device cpu    # smoke test
    python benchmarks/gpu_train_neu.py --plain --epochs 100                             # + plain ultralytics
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NEU_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")


def _voc_to_yolo(xml_path: Path) -> list[str]:
    from toolkit.labels import voc_as_yolo_text  # the import's own conversion ('difficult' boxes kept)

    return voc_as_yolo_text(xml_path, NEU_CLASSES).splitlines()


def _find(neu: Path, stem: str) -> tuple[Path, Path]:
    for images, notes in (("IMAGES", "ANNOTATIONS"), ("Validation_Images", "Validation_Annotations")):
        img, xml = neu / images / f"{stem}.jpg", neu / notes / f"{stem}.xml"
        if img.is_file() and xml.is_file():
            return img, xml
    raise FileNotFoundError(f"{stem}: image or annotation missing in {neu}")


def build_workspace(neu: Path, root: Path, limit: int | None, train_list: str = "train") -> dict[str, int]:
    """A toolkit workspace whose managed dataset is NEU-DET's fixed split (copies, stems from splits/)."""
    from toolkit.datafile import write_dataset_yaml
    from toolkit.layout import Workspace

    ws = Workspace.at(root)
    for folder in ws.tree():
        folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, list_name in (("train", train_list), ("val", "val"), ("test", "test")):
        stems = (neu / "splits" / f"{list_name}.txt").read_text().split()
        if limit:  # keep every class: take stems round-robin over the classes
            by_class = {c: [s for s in stems if s.startswith(c + "_")] for c in NEU_CLASSES}
            share = max(1, limit // len(NEU_CLASSES))
            stems = [s for c in NEU_CLASSES for s in by_class[c][:share]]
        for stem in stems:
            img, xml = _find(neu, stem)
            shutil.copyfile(img, ws.images_dir(split) / f"{stem}.jpg")
            (ws.labels_dir(split) / f"{stem}.txt").write_text("\n".join(_voc_to_yolo(xml)) + "\n")
        counts[split] = len(stems)
    write_dataset_yaml(ws, NEU_CLASSES, 1)
    return counts


def test_scores(best: Path, data: Path, imgsz: int, batch: int, device: str | None) -> dict[str, float]:
    from ultralytics import YOLO

    metrics = YOLO(str(best)).val(data=str(data), split="test", imgsz=imgsz, batch=batch, conf=0.001, iou=0.7,
                                  device=device, plots=False, verbose=False,
                                  project=str(best.parent.parent), name="test_val", exist_ok=True)
    return {"map50": float(metrics.box.map50), "map50_95": float(metrics.box.map)}


def train_plain(start: str, data: Path, out: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """Plain ultralytics with its defaults: the yardstick."""
    from ultralytics import YOLO

    t0 = time.time()
    model = YOLO(start)
    model.train(data=str(data), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device=args.device,
                workers=args.workers, project=str(out), name="plain", exist_ok=True, verbose=False)
    return out / "plain" / "weights" / "best.pt", time.time() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--neu", type=Path, default=REPO.parent / "shared" / "datasets" / "NEU-DET")
    parser.add_argument("--from", dest="start", default="scratch", help="scratch (yolov8n.yaml) or a .pt to fine-tune")
    parser.add_argument("--train-list", default="train", help="splits/<name>.txt for training: train or train_half")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default=None, help="default: GPU 0 if there is one")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per split (smoke test)")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="ultralytics KEY=VALUE")
    parser.add_argument("--plain", action="store_true", help="also train plain ultralytics with the same settings")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "gpu_train_neu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    if not (args.neu / "splits").is_dir():
        print(f"error: NEU-DET with splits/ not found at {args.neu}; pass --neu", file=sys.stderr)
        return 1
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    root = args.out / stamp
    counts = build_workspace(args.neu, root, args.limit, args.train_list)
    print(f"dataset: {counts} images (train list: {args.train_list})", file=sys.stderr)

    import train_yolov8
    from toolkit.layout import Workspace
    from toolkit.offline import prepare_ultralytics

    ws = Workspace.at(root)
    prepare_ultralytics(ws.ultralytics_config)
    start_from = "scratch" if args.start == "scratch" else str(Path(args.start).resolve())
    t0 = time.time()
    result = train_yolov8.run(train_yolov8.TrainConfig(
        root=root, start_from=start_from, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
        device=args.device, workers=args.workers, patience=0, extra=tuple(args.extra), name="bench"))
    toolkit_seconds = time.time() - t0
    rows = [{"recipe": "toolkit", "train_seconds": round(toolkit_seconds, 1), "epochs": result.epochs_completed,
             **test_scores(result.best, ws.dataset_yaml, args.imgsz, args.batch, args.device)}]
    if args.plain:
        best, seconds = train_plain("yolov8n.yaml" if start_from == "scratch" else start_from, ws.dataset_yaml,
                                    root / "plain_runs", args)
        rows.append({"recipe": "plain ultralytics", "train_seconds": round(seconds, 1), "epochs": args.epochs,
                     **test_scores(best, ws.dataset_yaml, args.imgsz, args.batch, args.device)})

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    report = {"device": device, "start": args.start, "epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch,
              "images": counts, "results": rows, "run_dir": str(result.run_dir)}
    if len(rows) == 2:
        report["ratio_time_toolkit_over_plain"] = round(rows[0]["train_seconds"] / max(rows[1]["train_seconds"], 1e-9), 3)
    (root / "result.json").write_text(json.dumps(report, indent=2))
    print(f"NEU-DET fixed split, test set ({counts['test']} images), {device}, from {args.start}, "
          f"{args.epochs} epochs, imgsz {args.imgsz}, batch {args.batch}")
    for row in rows:
        print(f"  {row['recipe']:<18} test mAP50 {row['map50']:.3f}  mAP50-95 {row['map50_95']:.3f}  "
              f"train {row['train_seconds']:.0f} s ({row['epochs']} epochs)")
    if "ratio_time_toolkit_over_plain" in report:
        print(f"  time ratio toolkit / plain: {report['ratio_time_toolkit_over_plain']}")
    print(f"  details: {root / 'result.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
