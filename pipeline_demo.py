"""The whole retraining loop on synthetic steel images, on a laptop CPU (as training_pipeline.py --demo).

1. In a fresh demo workspace: generate a labelled batch and a memory bank, set up, import,
   train a small v1.0 from scratch and put it in production (as a user's existing model).
2. Every demo run then drops a *new* labelled batch into training/incoming/, logs it in the
   memory bank, and runs the real pipeline: analyze -> prepare -> fine-tune -> compare -> promote or keep.
Images are 64 px so that the loop takes a few minutes on 2 CPU cores; the settings it uses are
written into the demo's training.yaml, where you can read them. It refuses a folder that holds a
production model it did not make.

Usage:
    python pipeline_demo.py                 # the same as: python training_pipeline.py --demo
    python pipeline_demo.py --root D:/try-it --json
"""
# For developers: the demo's workspace is made by toolkit/workflow/demo.py; this script only hands
# its flags to the pipeline's --demo.
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """``python pipeline_demo.py [--root DIR] [--json]``: the pipeline's ``--demo``."""
    import training_pipeline

    from toolkit.core.cli import build_parser

    args = build_parser(__doc__, prog="pipeline_demo.py", root_default="./demo, the folder demo in the current folder").parse_args(argv)
    passed = ["--root", str(args.root)] if args.root is not None else []
    passed += [flag for flag, on in (("--json", args.json), ("-v", args.verbose), ("-q", args.quiet)) if on]
    return training_pipeline.main(["--demo", *passed])


if __name__ == "__main__":
    raise SystemExit(main())
