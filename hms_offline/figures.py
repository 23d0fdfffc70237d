"""Figures (training runs' curves, `show`'s look at one sample): matplotlib without a display,
whole-epoch ticks, PNGs written atomically."""

from pathlib import Path

from hms_offline.atomic import atomic_output


def pyplot():
    """matplotlib.pyplot on the Agg backend: no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def integer_ticks(axes) -> None:
    """Whole epochs on the x axis."""
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def save_figure(figure, path: Path, dpi: int = 110) -> Path:
    """The figure as a PNG of its size x `dpi` pixels, written atomically, then closed."""
    plt = pyplot()
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    plt.close(figure)
    return Path(path)
