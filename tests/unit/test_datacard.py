"""The data card is one offline HTML page: every section, figure and table, with user text escaped."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import pandas as pd
import pytest
from PIL import Image

from trainwise import plots
from trainwise.datacard import MAX_TABLE_ROWS, CardSection, render_html

EVIL = "<script>alert(1)</script>"


class Page(HTMLParser):
    """What a browser would see: tags with their attributes, and the text between them."""

    def __init__(self, document: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(document)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


@pytest.fixture(scope="module")
def card() -> str:
    counts = {"cat": 30, "dog": 12, EVIL: 3}
    sections = [
        CardSection("Overview", text=f"3 classes.\nOne is called {EVIL}.\n\nA second paragraph & more."),
        CardSection("Classes", figures={"class balance": plots.class_distribution(counts),
                                        "as bytes": plots.save_png(plots.class_distribution({"a": 1}))},
                    tables={"counts": pd.DataFrame({"class": list(counts), "images": list(counts.values())})}),
        CardSection(f"Odd {EVIL} title", tables={"big": pd.DataFrame({"i": range(MAX_TABLE_ROWS + 50)})}),
        CardSection("Empty section"),
    ]
    return render_html(f"Data card: {EVIL}", sections)


def test_every_section_is_there_and_in_the_contents(card: str) -> None:
    page = Page(card)
    headings = [t.strip() for t in page.text if t.strip()]
    for title in ("Overview", "Classes", f"Odd {EVIL} title", "Empty section"):
        assert headings.count(title) == 2, title  # once in the contents, once as the heading
    links = [a["href"] for a in page.all("a")]
    ids = {attrs["id"] for attrs in page.all("section")}
    assert links == [f"#section-{i}" for i in range(1, 5)] and {link[1:] for link in links} == ids


def test_one_img_per_figure_each_a_valid_png(card: str) -> None:
    images = Page(card).all("img")
    assert card.count("<img") == len(images) == 2
    assert [img["alt"] for img in images] == ["class balance", "as bytes"]
    for img in images:
        src = img["src"] or ""
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        Image.open(io.BytesIO(png)).verify()


def test_user_text_is_escaped_everywhere(card: str) -> None:
    assert "<script" not in card
    assert card.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5  # title, h1, toc, heading, text, table
    assert "<p>3 classes.<br>\nOne is called &lt;script&gt;" in card
    assert "<p>A second paragraph &amp; more.</p>" in card


def test_tables_are_html_tables_capped_with_a_note(card: str) -> None:
    page = Page(card)
    assert len(page.all("table")) == 2
    assert f"First {MAX_TABLE_ROWS} of {MAX_TABLE_ROWS + 50} rows." in card
    big = card[card.index("<h3>big</h3>"):]
    assert big.count("<tr") == MAX_TABLE_ROWS + 1  # the rows shown and the header


def test_nothing_is_fetched_from_outside(card: str) -> None:
    # the MLflow UI shows HTML artifacts in a sandboxed iframe, often offline
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", card)
    assert "<link" not in card and "@import" not in card and "url(" not in card


def test_bytes_that_are_not_png_are_refused() -> None:
    with pytest.raises(ValueError, match=r"'broken'.*'S'"):
        render_html("t", [CardSection("S", figures={"broken": b"GIF89a"})])


def test_markdown_sections_render_tables_and_escape_raw_html() -> None:
    # run descriptions go into report.html as markdown; one written from data must not inject markup
    page = render_html("r", [CardSection("s", markdown="| a | b |\n|---|---|\n| **1** | <script>alert(1)</script> |\n\n[x](javascript:alert(1))")])
    assert "<table>" in page and "<strong>1</strong>" in page
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert 'href="javascript:' not in page
