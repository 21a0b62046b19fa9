"""Shared code of the retraining toolkit, in layers (README, "Repository layout"); imports point down only.

core -> data -> promotion -> model -> memory -> report -> workflow (each may import those before it).
"""
