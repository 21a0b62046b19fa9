"""Layer 7, the top: what chains the stages (the demo's workspace). Imports the layers below, never a
stage script (the pipeline hands the stages in).
"""
