"""The self-contained HTML page of the composition report: inline CSS, figures as data URIs."""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from ssl_seg import PALETTE
from ssl_seg.report.composition import MACERALS, SampleSummary

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1240px; padding: 24px; color: #222; background: #fff; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
p.meta, figcaption, .note { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.88em; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 8px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.thumbs { display: flex; flex-wrap: wrap; gap: 12px; }
.thumbs figure { width: 320px; margin: 0; } .thumbs img { width: 100%; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px;
            border: 1px solid #555; }
code { background: #f3f3f3; padding: 0 3px; }
"""


@dataclass
class Thumbnail:
    """An overlay thumbnail: encoded image bytes, its MIME type and a caption."""

    data: bytes
    mime: str
    caption: str


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _percent(value: object) -> str:
    number = float(value)  # type: ignore[arg-type]
    return "–" if math.isnan(number) else f"{number * 100:.1f}"


def _interval(low: object, high: object) -> str:
    if math.isnan(float(low)) or math.isnan(float(high)):  # type: ignore[arg-type]
        return "–"
    return f"{_percent(low)}–{_percent(high)}"


def _number(value: object) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else escape(str(value))


def _figure(png: bytes, alt: str, caption: str) -> str:
    return f'<figure><img src="{data_uri(png)}" alt="{escape(alt)}"><figcaption>{caption}</figcaption></figure>'


def _composition_table(rows: Sequence[dict[str, object]], name_column: str, points: int) -> str:
    head = [f'<th class="name">{escape(name_column)}</th>', "<th>images</th>", "<th>organic % of field</th>"]
    for maceral in MACERALS:
        head.append(f"<th>{maceral} % of organic</th><th>95% bootstrap</th><th>95% {points}-point count</th>")
    body = []
    for row in rows:
        cells = [
            f'<td class="name">{escape(str(row[name_column]))}</td>',
            f"<td>{row['n_images']}</td>",
            f"<td>{_percent(row['organic_field_fraction'])}</td>",
        ]
        for maceral in MACERALS:
            cells.append(f"<td>{_percent(row[f'{maceral}_organic_fraction'])}</td>")
            cells.append(
                "<td>"
                + _interval(row[f"{maceral}_organic_fraction_ci_low"], row[f"{maceral}_organic_fraction_ci_high"])
                + "</td>"
            )
            cells.append(f"<td>{_interval(row[f'{maceral}_points_ci_low'], row[f'{maceral}_points_ci_high'])}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _objects_table(rows: Sequence[dict[str, object]]) -> str:
    columns = [
        ("sample", "sample"),
        ("class", "class"),
        ("object_count", "objects"),
        ("objects_per_image", "per image"),
        ("area_mean_px", "mean area (px)"),
        ("area_median_px", "median area (px)"),
        ("area_p90_px", "p90 area (px)"),
        ("elongation_mean", "mean elongation"),
    ]
    head = "".join(
        f'<th class="name">{label}</th>' if key in ("sample", "class") else f"<th>{label}</th>"
        for key, label in columns
    )
    body = []
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row[key]
            if key in ("sample", "class"):
                cells.append(f'<td class="name">{escape(str(value))}</td>')
            elif key == "elongation_mean":
                text = "–" if math.isnan(float(value)) else f"{float(value):.2f}"  # type: ignore[arg-type]
                cells.append(f"<td>{text}</td>")
            else:
                cells.append(f"<td>{_number(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _legend() -> str:
    spans = "".join(
        f'<span><i style="background: rgb{PALETTE[index + 1]}"></i>{maceral}</span>'
        for index, maceral in enumerate(MACERALS)
    )
    return f'<p class="legend">{spans}</p>'


def render_page(
    *,
    title: str,
    source: str,
    samples: Sequence[SampleSummary],
    object_rows: Sequence[dict[str, object]],
    figures: dict[str, bytes],
    thumbnails: Sequence[Thumbnail] | None,
    bootstrap: int,
    points: int,
    grouping: str,
    min_object_pixels: int = 1,
    notes: Sequence[str] = (),
) -> str:
    """The whole page as one HTML string. ``figures`` holds PNG bytes under the keys
    ``ternary``, ``bars`` and ``sizes``; ``thumbnails`` is None when no images were given."""
    n_images = sum(len(s.image_rows) for s in samples)
    sections = [
        "<header>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{n_images} image(s) in {len(samples)} sample(s) from <code>{escape(source)}</code>; '
        f"samples {escape(grouping)}. Fractions are areas of predicted macerals. 95% intervals: bootstrap over "
        f"each sample's images ({bootstrap} resamples; needs at least 2 images) and the Wilson interval of an "
        f"equivalent {points}-point count on organic matter (ISO 7404-3).</p>",
        *(f'<p class="note">{escape(note)}</p>' for note in notes),
        "</header>",
        '<section id="composition"><h2>Composition per sample</h2>',
        _composition_table([s.row for s in samples], "sample", points),
        "</section>",
        '<section id="ternary" class="plot"><h2>Ternary diagram</h2>',
        _figure(
            figures["ternary"],
            "ternary diagram of organic composition per sample",
            "Large dots: each sample's pooled composition; crosses: its images; faint cloud: bootstrap "
            "resamples of its images (the spread of the cloud is the 95% interval in the table).",
        ),
        "</section>",
        '<section id="bars" class="plot"><h2>Composition with intervals</h2>',
        _figure(
            figures["bars"],
            "organic fractions per sample with error bars",
            "Error bars: bootstrap 95% interval over images; for a single-image sample, the point-count interval."
            if bootstrap else "Error bars: the 95% point-count interval (no bootstrap: --bootstrap 0).",
        ),
        "</section>",
        '<section id="sizes" class="plot"><h2>Object sizes</h2>',
        _figure(
            figures["sizes"],
            "object size histograms per maceral",
            "Connected objects (8-connectivity) per maceral, log-spaced area bins"
            + (f"; objects under {min_object_pixels} pixels left out." if min_object_pixels > 1 else "."),
        ),
        _objects_table(object_rows),
        '<p class="note">Elongation = 1 − minor/major axis of the object\'s fitted ellipse '
        "(0 round, towards 1 thin).</p>",
        "</section>",
    ]
    if thumbnails is not None:
        sections.append('<section id="thumbnails"><h2>Overlays</h2>')
        sections.append(_legend())
        if thumbnails:
            sections.append('<div class="thumbs">')
            for thumb in thumbnails:
                sections.append(
                    f'<figure><img src="{data_uri(thumb.data, thumb.mime)}" alt="{escape(thumb.caption)}">'
                    f"<figcaption>{escape(thumb.caption)}</figcaption></figure>"
                )
            sections.append("</div>")
        else:
            sections.append('<p class="note">No thumbnails requested.</p>')
        sections.append("</section>")
    image_rows = [row for s in samples for row in s.image_rows]
    sections += [
        '<section id="images"><h2>Per image</h2>',
        f"<details><summary>{len(image_rows)} image(s)</summary>",
        _composition_table(image_rows, "image", points),
        "</details></section>",
        '<footer><p class="note">Full numbers: <code>composition.csv</code> and <code>objects.csv</code> '
        "beside this page.</p></footer>",
    ]
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
