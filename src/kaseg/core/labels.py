"""What a label means beyond a class index."""

IGNORE_INDEX = 255  # the label of pixels that take no part in losses or metrics
