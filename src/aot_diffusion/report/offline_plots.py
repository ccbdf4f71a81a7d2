"""`dvc plots show / diff` without a network: DVC's HTML page loads Vega, Vega-Lite and Vega-Embed from a CDN,
so offline its charts stay blank. ``aot-diffusion offline-plots`` writes an HTML template with the three
libraries inlined (bundled by the vl-convert-python package, no download) to ``.dvc/offline_plots.html``, which
``.dvc/config`` names as ``plots.html_template`` (relative to .dvc/); ``make setup`` runs it. The file is
generated, not committed: its JavaScript is the libraries' own, at the installed version."""

from __future__ import annotations

from pathlib import Path

from ..utils import atomic_write_text

TEMPLATE = Path(".dvc") / "offline_plots.html"  # .dvc/config: [plots] html_template = offline_plots.html

# DVC fills {plot_divs} (each chart: a div and a script calling vegaEmbed); {scripts}, where DVC's default
# page puts the CDN's <script src=...> tags, is left out on purpose.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC plots (offline: Vega {vega}, Vega-Embed {embed} inlined)</title>
    <script type="text/javascript">
__BUNDLE__
    </script>
    <script type="text/javascript">
        // SVG instead of canvas: the drawn marks are in the page (readable, printable, and checked by a test)
        const embedWithCanvas = window.vegaEmbed;
        window.vegaEmbed = (el, spec, opt) => embedWithCanvas(el, spec, Object.assign({renderer: "svg"}, opt || {}));
    </script>
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def template_html() -> str:
    """The page: DVC's placeholders and the bundled libraries (vl_convert.javascript_bundle)."""
    import vl_convert

    bundle = vl_convert.javascript_bundle()
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
        if placeholder in bundle:  # DVC substitutes these anywhere in the page
            raise RuntimeError(f"the Vega bundle contains DVC's placeholder {placeholder}: can't inline it")
    page = PAGE.replace("{vega}", vl_convert.get_vega_version()).replace("{embed}", vl_convert.get_vega_embed_version())
    page = page.replace("{{", "{").replace("}}", "}")
    return page.replace("__BUNDLE__", bundle)


def write_template(root: Path | str = ".") -> Path:
    path = Path(root) / TEMPLATE
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent} not found: run from the repository root (a DVC repository)")
    atomic_write_text(path, template_html())
    return path
