"""Maceral composition report: what a petrographer wants from predicted masks.

``build_report`` turns a folder of ``<id>_pred.npy`` masks into per-image and per-sample
area fractions of inertinite, vitrinite and liptinite (of the organic matter and of the whole
field) with 95% intervals, object statistics, a CSV pair and a self-contained HTML page.

>>> from ssl_seg.report import build_report, format_summary   # doctest: +SKIP
>>> print(format_summary(build_report("preds/", "report/", samples_csv="samples.csv")))  # doctest: +SKIP
"""

from ssl_seg.report.build import build_report, format_summary
from ssl_seg.report.composition import (
    COMPOSITION_DOC,
    OBJECTS_DOC,
    columns_markdown,
    composition_columns,
    object_columns,
    wilson_interval,
)

__all__ = [
    "COMPOSITION_DOC",
    "OBJECTS_DOC",
    "build_report",
    "columns_markdown",
    "composition_columns",
    "format_summary",
    "object_columns",
    "wilson_interval",
]
