"""The data card: one self-contained HTML page of text, figures and tables.

Self-contained because the MLflow UI shows HTML artifacts in a sandboxed iframe that may be offline:
figures are inline base64 PNGs, the CSS is inline, nothing is fetched. Everything that comes from the
data (class names, column names, cell values, titles) is HTML-escaped: a class named `<script>` must
show as text, not run.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
from markdown_it import MarkdownIt
from matplotlib.figure import Figure

from trainwise.plots import save_png

# CommonMark with tables; html=False escapes any raw HTML, and link validation drops javascript: URLs
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")
MAX_TABLE_ROWS = 200  # beyond this a table stops being read and only makes the page slow
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.5; }
h1 { border-bottom: 2px solid #0072B2; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
nav ol { columns: 2; }
figure { margin: 1.5em 0; }
figure img { max-width: min(100%, 820px); height: auto; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: .9em; }
.table-wrap { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: .85em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f6f8; }
section table td, section table th { text-align: left; }
code { background: #f4f6f8; padding: 0 .2em; }
tbody tr:nth-child(even) { background: #fafafa; }
"""


@dataclass(frozen=True)
class CardSection:
    """One section of the card: markdown (a run's description; raw HTML in it is escaped), plain text
    (blank lines separate paragraphs), named figures (a Figure or PNG bytes) and named tables, drawn
    in that order."""

    title: str
    text: str = ""
    figures: Mapping[str, Figure | bytes] = field(default_factory=dict)
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    markdown: str = ""  # last: sections are often made positionally (title, text, figures)


def render_html(title: str, sections: Sequence[CardSection]) -> str:
    """The whole card as one HTML document: a table of contents, then each section."""
    esc = html.escape
    toc = "\n".join(f'<li><a href="#section-{i}">{esc(s.title)}</a></li>' for i, s in enumerate(sections, 1))
    body = "\n".join(_section(i, s) for i, s in enumerate(sections, 1))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>\n<nav><h2>Contents</h2>\n<ol>\n{toc}\n</ol></nav>\n{body}\n</body>\n</html>\n"
    )


def _section(index: int, section: CardSection) -> str:
    parts = [f'<section id="section-{index}">', f"<h2>{html.escape(section.title)}</h2>"]
    if section.markdown.strip():
        parts.append(_MARKDOWN.render(section.markdown))
    parts += [_paragraph(p) for p in re.split(r"\n\s*\n", section.text.strip()) if p.strip()]
    parts += [_figure(name, fig, section.title) for name, fig in section.figures.items()]
    parts += [_table(name, frame) for name, frame in section.tables.items()]
    parts.append("</section>")
    return "\n".join(parts)


def _paragraph(text: str) -> str:
    # single newlines inside a paragraph are kept: notes are often written one fact per line
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.strip().splitlines()) + "</p>"


def _figure(name: str, fig: Figure | bytes, section: str) -> str:
    png = save_png(fig) if isinstance(fig, Figure) else bytes(fig)
    if not png.startswith(_PNG_SIGNATURE):
        raise ValueError(f"figure {name!r} in data card section {section!r} is neither a Figure nor PNG bytes")
    data = base64.b64encode(png).decode("ascii")
    alt = html.escape(name, quote=True)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
            f"<figcaption>{html.escape(name)}</figcaption></figure>")


def _table(name: str, frame: pd.DataFrame) -> str:
    shown = frame.head(MAX_TABLE_ROWS)
    cut = len(frame) > MAX_TABLE_ROWS
    note = f'<p class="note">First {MAX_TABLE_ROWS} of {len(frame):,} rows.</p>' if cut else ""
    # escape=True escapes cell values, column names and the index alike; a plain 0..n-1 index is noise
    table = shown.to_html(escape=True, border=0, na_rep="", max_cols=None, index=not isinstance(frame.index, pd.RangeIndex))
    return f"<h3>{html.escape(name)}</h3>\n<div class=\"table-wrap\">{table}</div>{note}"
