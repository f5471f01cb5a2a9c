"""One self-contained HTML file that holds a whole run: figures embedded as PNG.

:func:`write_report` renders generic sections (text, tables, figures); the sweep's
:func:`brainalign.sweep.analyze.report` fills them from a results store.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._version import __version__
from ._io import atomic_write_text

__all__ = ["Section", "figure_to_data_uri", "write_report"]


@dataclass
class Section:
    """A titled part of the report: paragraphs, tables (pandas DataFrames), figures."""

    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Any] = field(default_factory=list)
    figures: list[tuple[Any, str]] = field(default_factory=list)  # (matplotlib Figure or PNG bytes/path, caption)
    code: str | None = None


def figure_to_data_uri(fig: Any, dpi: int = 110) -> str:
    """A matplotlib Figure, PNG bytes or a PNG/GIF path as a ``data:`` URI."""
    if isinstance(fig, (str, Path)):
        p = Path(fig)
        mime = "image/gif" if p.suffix.lower() == ".gif" else "image/png"
        return f"data:{mime};base64," + base64.b64encode(p.read_bytes()).decode()
    if isinstance(fig, bytes):
        return "data:image/png;base64," + base64.b64encode(fig).decode()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.7em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.9em;color:#555}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em} .meta{color:#666;font-size:.9em}
nav a{margin-right:1em}
"""


def _table_html(df: Any) -> str:
    try:
        return df.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, escape=True)
    except AttributeError:
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in df)
        return f"<table>{rows}</table>"


def write_report(path: str | Path, title: str, sections: list[Section], subtitle: str | None = None) -> Path:
    """Write a self-contained HTML report (atomically) and return its path."""
    path = Path(path)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>{html.escape(subtitle or '')} — made by brainalign {__version__} on "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</p>",
        "<nav>" + "".join(f"<a href='#s{i}'>{html.escape(s.title)}</a>" for i, s in enumerate(sections)) + "</nav>",
    ]
    for i, s in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{html.escape(s.title)}</h2>")
        parts += [f"<p>{html.escape(t)}</p>" for t in s.text]
        parts += [_table_html(t) for t in s.tables]
        for fig, caption in s.figures:
            parts.append(
                f"<figure><img src='{figure_to_data_uri(fig)}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        if s.code is not None:
            parts.append(f"<pre>{html.escape(s.code)}</pre>")
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
    return path


def json_block(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
