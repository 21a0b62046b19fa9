"""Shared modules of the retraining toolkit, one topic each (see DESIGN.md)."""
