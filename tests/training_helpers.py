"""Shared by the training tests: a Ctrl-C as the user gives it, at one point of ultralytics' loop."""
from __future__ import annotations


def interrupt_training_at(patch, event: str) -> None:
    """Make every training run raise KeyboardInterrupt at the ultralytics callback ``event``
    (``patch``: a pytest monkeypatch or one of its contexts; undone with it)."""
    from toolkit.model import training as tr

    attach = tr.EpochMonitor.attach

    def attach_and_interrupt(self, model):
        attach(self, model)

        def interrupt(trainer):
            raise KeyboardInterrupt

        model.add_callback(event, interrupt)

    patch.setattr(tr.EpochMonitor, "attach", attach_and_interrupt)
