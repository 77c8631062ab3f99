"""``kaseg compare``: does distillation help on my data, and which method? The arms (``arms``),
the paired comparison and its tuning (``runner``), its tables and statistics (``tables``), its
report (``report``) and the Slurm executor (``cluster``)."""

from .tables import code_version, context_table, label, markdown_table, paired_rows

__all__ = ["code_version", "context_table", "label", "markdown_table", "paired_rows"]
