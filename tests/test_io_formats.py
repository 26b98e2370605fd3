"""What every volume format must do alike: lazy (dask) writing and reading, refusal
of non-finite values before anything is written, and lazy opening of large files."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from sxtlab import FormatError
from sxtlab.io import _amira, _mrc, _tiff, read_volume, write_volume
from volumes import image

FORMATS = [pytest.param(".mrc", _mrc, id="mrc"), pytest.param(".tif", _tiff, id="tiff"),
           pytest.param(".am", _amira, id="amiramesh")]


@pytest.mark.parametrize("suffix, module", FORMATS)
def test_dask_volume_written_and_read_lazily(tmp_path, no_warnings, suffix, module):
    vol = image(shape=(10, 12, 14))
    lazy = vol.copy(data=da.from_array(vol.values, chunks=(3, 12, 14)))
    path = write_volume(lazy, tmp_path / f"lazy{suffix}")
    back = read_volume(path, chunks=(4, 6, 7))
    assert isinstance(back.data, da.Array) and back.data.chunksize == (4, 6, 7)
    np.testing.assert_array_equal(back.values, vol.values)
    assert back.attrs["voxel_size_um"] == vol.attrs["voxel_size_um"]


@pytest.mark.parametrize("suffix, module", FORMATS)
def test_dask_volume_with_nan_is_refused(tmp_path, suffix, module):
    vol = image(shape=(4, 5, 6))
    bad = vol.values.copy()
    bad[3, 1, 2] = np.nan
    lazy = vol.copy(data=da.from_array(bad, chunks=(2, 5, 6)))
    with pytest.raises(FormatError, match=r"1 non-finite values .*the first at \(3, 1, 2\)") as info:
        write_volume(lazy, tmp_path / f"nan{suffix}")
    assert "cannot write" not in str(info.value)
    assert not list(tmp_path.iterdir())  # nothing half-written is left


@pytest.mark.parametrize("suffix, module", FORMATS)
def test_large_files_open_lazily(tmp_path, monkeypatch, suffix, module):
    path = write_volume(image(), tmp_path / f"v{suffix}")
    monkeypatch.setattr(module, "LAZY_BYTES", 100)
    back = read_volume(path)
    assert isinstance(back.data, da.Array)
    np.testing.assert_array_equal(back.values, image().values)
