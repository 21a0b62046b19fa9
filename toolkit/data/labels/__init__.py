"""Labelled batches: ``read`` (any format) over ``yolo``, ``voc`` and ``coco``, on the common ``source`` form."""
