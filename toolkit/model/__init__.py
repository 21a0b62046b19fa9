"""Layer 4: metrics, inference, evaluation, training, the machine and the training plan. Imports the
layers below (the plan reads the registry).
"""
