"""The napari screenshot of the README: sample_12 opened by sxtlab's plugin, its widget docked.

Needs ``pip install -e ".[napari]"`` and a display (``xvfb-run -a python
scripts/napari_screenshot.py docs/napari_sample_12.png`` on a machine without one).
The plugin is registered from the source tree's manifest, so that this works from a
checkout whose installed entry points are older.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import imageio.v3 as iio
import napari
import npe2

import sxtlab


def main(out: str) -> None:
    pm = npe2.PluginManager.instance()
    if "sxtlab" not in pm._manifests:
        pm.register(npe2.PluginManifest.from_file(Path(sxtlab.__file__).parent / "napari.yaml"))
    viewer = napari.Viewer(show=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sample_12 records no voxel size; the layers say pixels
        viewer.open(str(sxtlab.data.ncxt_sample_12_path()), plugin="sxtlab")
    viewer.window.add_plugin_dock_widget("sxtlab", "Segment organelles")
    viewer.dims.set_point(0, 29)  # an annotated plane
    viewer.reset_view()
    iio.imwrite(out, viewer.screenshot(canvas_only=False, flash=False))
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/napari_sample_12.png")
