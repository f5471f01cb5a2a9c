"""One self-contained HTML file that holds a whole run: figures embedded as PNG.

:func:`write_report` renders generic sections (text, lists, tables, figures, code);
:func:`brainalign.sweep.analyze.report` fills them from a results store.

Formatting rules (shared by every table): numbers with 3 significant digits
(:func:`fmt_number`), token counts as ``2.05 B`` / ``310 k`` (:func:`fmt_tokens`, any
column whose name mentions tokens), missing values as an en dash, never ``NaN``. A
number quoted in the text is written by :func:`num` as
``<span class="num" data-key=... data-...>value</span>`` so that a reader (or a test)
can tell exactly which stored quantity it is.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._io import atomic_write_text
from ._version import __version__

__all__ = ["Section", "figure_to_data_uri", "write_report", "fmt_number", "fmt_tokens", "fmt_p", "num",
           "format_frame", "slug", "MISSING"]

#: What a table cell or a quoted number shows where there is no value.
MISSING = "\u2013"


@dataclass
class Section:
    """A titled part of the report.

    ``text``: paragraphs (escaped); ``html``: blocks of trusted HTML (made with
    :func:`num` and :func:`html.escape`); ``lists``: each a bulleted list of lines;
    ``tables``: pandas DataFrames (formatted by :func:`format_frame`); ``figures``:
    ``(figure, caption)`` or ``(figure, caption, width)`` with ``width`` the fraction of
    the page (figures share a row while their widths fit); ``code``: a preformatted
    block; ``collapsed``: the body inside a closed ``<details>``; ``id``: the anchor
    (default: from the title).
    """

    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Any] = field(default_factory=list)
    figures: list[tuple] = field(default_factory=list)
    code: str | None = None
    html: list[str] = field(default_factory=list)
    lists: list[list[str]] = field(default_factory=list)
    collapsed: bool = False
    id: str | None = None


def slug(title: str) -> str:
    """An HTML id from a title: lower case, words joined by ``-``."""
    s = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return s or "section"


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


# -- formatting -----------------------------------------------------------------------------
def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def fmt_number(v: Any, sig: int = 3) -> str:
    """``v`` with ``sig`` significant digits (``0.0123``, ``1.23e-05``, ``12``), or an
    en dash when it is missing. Integers are shown whole."""
    if v is None or isinstance(v, bool):
        return MISSING if v is None else ("yes" if v else "no")
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if not _finite(v):
        return MISSING
    v = float(v)
    if v == int(v) and abs(v) < 10 ** sig:
        return str(int(v))
    if 10 ** sig <= abs(v) < 1e6:  # 12345.6 -> 12300, not 1.23e+04
        return str(int(float(f"{v:.{sig}g}")))
    return f"{v:.{sig}g}"


def fmt_p(v: Any) -> str:
    """A p-value with 2 significant digits (``0.012``, ``3.4e-06``)."""
    return fmt_number(v, sig=2) if _finite(v) else MISSING


def fmt_tokens(v: Any) -> str:
    """A token count as ``2.05 B``, ``310 k``, ``12.3 M``, ``512`` (3 significant digits)."""
    if not _finite(v):
        return MISSING
    v = float(v)
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g} {suf}"
    return f"{v:.3g}" if v != int(v) else str(int(v))


def num(value: Any, key: str, text: str | None = None, fmt: str = "number", **attrs: Any) -> str:
    """A quoted number: ``<span class="num" data-key="key" data-<attr>="...">text</span>``.

    ``fmt`` ("number", "tokens", "p", "int", "percent") formats ``value`` unless ``text``
    is given; ``attrs`` name what the number is (``roi=``, ``checkpoint=``, ...;
    underscores become dashes).
    """
    if text is None:
        text = {"tokens": fmt_tokens, "p": fmt_p, "int": lambda v: str(int(v)),
                "percent": lambda v: f"{100 * float(v):.3g}%"}.get(fmt, fmt_number)(value)
    data = "".join(f' data-{k.replace("_", "-")}="{html.escape(str(v), quote=True)}"' for k, v in attrs.items()
                   if v is not None)
    return (f'<span class="num" data-key="{html.escape(key, quote=True)}" data-fmt="{fmt}"{data}>'
            f"{html.escape(text)}</span>")


def _is_tokens_column(name: Any) -> bool:
    s = str(name).lower()
    return "token" in s and "log" not in s


def _is_p_column(name: Any) -> bool:
    s = str(name).lower()
    return s == "p" or s.startswith("p ") or s.startswith("p (") or s.endswith(" p") or "p-value" in s or s == "adjusted p"


def format_frame(df: Any) -> Any:
    """A copy of a DataFrame with every cell a string: 3 significant digits, tokens as
    ``2.05 B`` (columns whose name mentions tokens), p-values with 2, missing as ``–``."""
    import pandas as pd

    out = pd.DataFrame(index=df.index)
    for col in df.columns:
        s = df[col]
        if _is_tokens_column(col):
            f = fmt_tokens
        elif _is_p_column(col):
            f = fmt_p
        else:
            f = fmt_number
        out[col] = [_cell(v, f) for v in s.tolist()]
    return out


def _cell(v: Any, f) -> str:
    if v is None:
        return MISSING
    if isinstance(v, str):
        return v if v.strip() and v.strip().lower() != "nan" else MISSING
    if isinstance(v, (bool, int, float)) or hasattr(v, "dtype"):
        try:
            if isinstance(v, bool) or str(getattr(v, "dtype", "")) == "bool":
                return "yes" if bool(v) else "no"
            if isinstance(v, int) or "int" in str(getattr(v, "dtype", "")):
                return str(int(v))
        except (TypeError, ValueError):
            pass
        return f(v)
    return str(v)


def _table_html(df: Any) -> str:
    if hasattr(df, "columns"):
        body = format_frame(df)
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in body.columns)
        rows = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in body.itertuples(index=False))
        return f"<div class='table'><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>"
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in df)
    return f"<div class='table'><table>{rows}</table></div>"


_NUMERIC = re.compile(r"^[-+\u2212]?(\d[\d.,]*(e[-+]?\d+)?( [kMBT])?%?|\u2013)$")


def _td(c: str) -> str:
    """A cell: numbers right-aligned, text left-aligned."""
    return f"<td class='n'>{html.escape(c)}</td>" if _NUMERIC.match(c) else f"<td>{html.escape(c)}</td>"


# -- page -----------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.n{text-align:right;white-space:nowrap} .table{overflow-x:auto}
.figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
figure{margin:.6em 0;box-sizing:border-box} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.88em;color:#555}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em} .meta{color:#666;font-size:.88em}
.findings li{margin:.3em 0} .num{font-variant-numeric:tabular-nums;font-weight:600}
ul.lines{padding-left:1.2em} ul.lines li{margin:.15em 0} ul.lines li.sub{list-style:circle;margin-left:1.2em}
nav{font-size:.9em;line-height:1.8;display:flex;flex-wrap:wrap;column-gap:1.2em} nav a{white-space:nowrap}
details>summary{cursor:pointer;color:#444}
@media print{
  nav{display:none} body{max-width:none;margin:0} details>*{display:block}
  details::details-content{content-visibility:visible;display:block}
  figure,table,.findings li{break-inside:avoid;page-break-inside:avoid} h2{break-after:avoid}
}
"""

_PRINT_JS = ("<script>addEventListener('beforeprint',function(){document.querySelectorAll('details')"
             ".forEach(function(d){d.setAttribute('open','')})});</script>")


def _figures_html(figures: list[tuple]) -> str:
    items = []
    for item in figures:
        fig, caption = item[0], item[1]
        width = float(item[2]) if len(item) > 2 else 1.0
        basis = f"calc({100 * width:.4g}% - 1em)" if width < 1 else "100%"
        items.append(
            f"<figure style='flex:0 0 {basis}'><img src='{figure_to_data_uri(fig)}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return f"<div class='figs'>{''.join(items)}</div>" if items else ""


def _lines_html(lines: list[str]) -> str:
    """A list, one item per line; indented lines (leading spaces) as sub-items."""
    items = "".join(f"<li class='{'sub' if ln.startswith(' ') else 'top'}'>{html.escape(ln.strip())}</li>"
                    for ln in lines if ln.strip())
    return f"<ul class='lines'>{items}</ul>"


def _section_html(s: Section) -> str:
    sid = s.id or slug(s.title)
    body = [f"<p>{html.escape(t)}</p>" for t in s.text]
    body += list(s.html)
    body.append(_figures_html(s.figures))
    body += [_lines_html(lines) for lines in s.lists]
    body += [_table_html(t) for t in s.tables]
    if s.code is not None:
        body.append(f"<pre>{html.escape(s.code)}</pre>")
    inner = "\n".join(b for b in body if b)
    if s.collapsed:
        inner = f"<details><summary>Show {html.escape(s.title.lower())}</summary>\n{inner}\n</details>"
    return f"<section id='{sid}'><h2>{html.escape(s.title)}</h2>\n{inner}\n</section>"


def write_report(path: str | Path, title: str, sections: list[Section], subtitle: str | None = None,
                 lead: str | None = None) -> Path:
    """Write a self-contained HTML report (atomically) and return its path.

    ``subtitle``: a small provenance line under the title (escaped); ``lead``: trusted
    HTML shown under it (e.g. the dataset and model in one sentence).
    """
    path = Path(path)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = f"{html.escape(subtitle)} — " if subtitle else ""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>{_PRINT_JS}</head><body>",
        f"<header><h1>{html.escape(title)}</h1>",
        f"<p class='meta'>{meta}made by brainalign {__version__} on {stamp}</p>",
        f"<p>{lead}</p>" if lead else "",
        "</header><nav>" + "".join(f"<a href='#{s.id or slug(s.title)}'>{html.escape(s.title)}</a>" for s in sections)
        + "</nav>",
    ]
    parts += [_section_html(s) for s in sections]
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(p for p in parts if p))
    return path


def json_block(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


def yaml_block(obj: Any) -> str:
    """``obj`` as YAML (block style, keys in their order); JSON when PyYAML is missing."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is a dependency
        return json_block(obj)
    return yaml.safe_dump(json.loads(json.dumps(obj, default=str)), sort_keys=False, default_flow_style=False,
                          allow_unicode=True).rstrip()
