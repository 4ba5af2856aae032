"""Image scrapers of the examples gallery (named in ``sphinx_gallery_conf`` of conf.py)."""

from matplotlib.figure import Figure
from sphinx_gallery.scrapers import figure_rst

_saved = {}


def headless_figures(block, block_vars, gallery_conf, **kwargs):
    """Saves every figure an example holds in a variable that pyplot does not manage.

    ``nnlab.plot`` draws on figures made outside pyplot, so that it runs headless and leaves
    nothing open; sphinx-gallery's matplotlib scraper sees only pyplot's figures. Each such
    figure is saved once, after the code block that made it."""
    saved = _saved.setdefault(block_vars["src_file"], set())
    paths = []
    for value in list(block_vars["example_globals"].values()):
        if isinstance(value, Figure) and value.canvas.manager is None and id(value) not in saved:
            saved.add(id(value))
            path = next(block_vars["image_path_iterator"])
            value.savefig(path)
            paths.append(path)
    return figure_rst(paths, gallery_conf["src_dir"])
