"""A matplotlib Figure that displays itself in notebooks without pyplot."""

from __future__ import annotations

import io

from matplotlib.figure import Figure

__all__ = ["NotebookFigure"]


class NotebookFigure(Figure):
    """A :class:`~matplotlib.figure.Figure` that shows itself as a cell's value in IPython.

    Figures made without pyplot stay out of pyplot's registry (no leaks in loops, no
    second copy at the end of a notebook cell), but IPython only knows how to draw a
    Figure once pyplot's inline backend is active; ``_repr_png_`` covers the rest.
    Where the inline backend is active its formatter takes precedence.
    """

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png")
        return buf.getvalue()
