"""An evaluation's results as one self-contained HTML page.

`render_report` turns an evaluation record, its metrics document
(`dyff.metrics.compute`) and its most confident errors (with the images of
those rows) into a page that needs nothing else: inline CSS, charts as inline
SVG, thumbnails as base64 `data:` URIs, and no script at all. It can be mailed,
archived or opened offline and shows the same thing everywhere.

Every piece of text that comes from users (names, class labels) is escaped:
the Jinja2 templates autoescape; labels come straight from uploaded data.

Sections carry stable ids for tests and links: `#summary`, `#metrics-table`,
`#reliability`, `#confusion-matrix`, `#per-class`, `#gates` (with
`#gates-verdict` in the header), `#slices` (`#slices-N` per slice spec),
`#intervals-note`, `#robustness` (`#robustness-summary`, and `#robustness-N`
per perturbation kind: its chart), `#confident-errors`. A metric that was not
requested keeps its section with a "not computed" note.

`build_report` gathers the inputs from the stores: the Evaluation record,
metrics.json, the prediction files of its manifest and the dataset rows of
the errors (only the shards holding those rows, only those rows).

Modules: `page` (what each section shows, and the rendering), `criteria_view`
and `robustness_view` (the display rows of metrics.json's `criteria` and
`robustness` sections, shared with `dyff metrics` and the web view), `charts`
(chart layout from the data: scales, ticks, bands, label placement), `thumbnails`,
`sources` (reading the stores); `templates/` holds the markup and the CSS.
"""

from dyff.report.page import render_report
from dyff.report.sources import ERRORS_SHOWN, build_report
from dyff.report.thumbnails import THUMB_PX, thumbnail_data_uri

__all__ = ["ERRORS_SHOWN", "THUMB_PX", "build_report", "render_report", "thumbnail_data_uri"]
