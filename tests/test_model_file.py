"""CascadeModel.load validates model.json and the weights before building anything (issue 16)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch

from sxtlab.cascade import CascadeModel, Normalisation
from sxtlab.errors import FormatError
from sxtlab.unet import UNet3D, UNetConfig


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    s1 = UNet3D(UNetConfig(in_channels=1, out_channels=3, depth=2, base_width=2))
    s2 = UNet3D(UNetConfig(in_channels=3, out_channels=3, depth=2, base_width=2))
    model = CascadeModel(s1, s2, ["cell", "nucleus"], factor=2, normalisation=Normalisation(0.2, 0.1),
                         voxel_size=0.05, stage1_patch=8, stage2_patch=8)
    return model.save(tmp_path_factory.mktemp("m") / "model")


def _edited(saved: Path, tmp_path: Path, edit) -> Path:
    """A copy of the saved model whose model.json ``edit(meta)`` changed (or replaced, if it returns)."""
    out = tmp_path / "edited"
    out.mkdir()
    (out / "weights.safetensors").write_bytes((saved / "weights.safetensors").read_bytes())
    meta = json.loads((saved / "model.json").read_text())
    replaced = edit(meta)
    text = replaced if isinstance(replaced, str) else json.dumps(meta)
    (out / "model.json").write_text(text)
    return out


def test_a_valid_model_loads(saved) -> None:
    model = CascadeModel.load(saved)
    assert model.classes == ["cell", "nucleus"] and model.stage2_patch == (8, 8, 8)


@pytest.mark.parametrize("field, value, message", [
    (("stage1", "unet", "depth"), 100000,
     r"field 'stage1\.unet\.depth': found 100000, expected an integer in \[1, 8\]"),
    (("stage2", "unet", "base_width"), 100000,
     r"field 'stage2\.unet\.base_width': found 100000, expected an integer in \[1, 512\]"),
    (("stage1", "unet", "depth"), True, r"field 'stage1\.unet\.depth': found true, expected an integer"),
    (("stage1", "unet", "negative_slope"), "0.01", r"'stage1\.unet\.negative_slope': found \"0\.01\""),
    (("stage1", "unet", "norm"), "batch", r"'stage1\.unet\.norm': found \"batch\", expected one of "
                                           r"\['instance', 'group'\]"),
    (("stage1", "unet", "input_to_head"), 1, r"'stage1\.unet\.input_to_head': found 1, expected true or false"),
    (("stage2", "unet", "layout"), "residual", r"'stage2\.unet\.layout': found \"residual\", expected one of "
                                                r"\['pooled', 'strided'\]"),
    (("stage1", "unet", "dropout"), 0.5, r"'stage1\.unet': unknown U-Net settings \['dropout'\]"),
    (("stage1", "patch"), [8, 8, 100000], r"field 'stage1\.patch': found \[8, 8, 100000\], expected one or "
                                          r"three integers in \[1, 1024\]"),
    (("stage2", "patch"), [7, 8, 8], r"field 'stage2\.patch': \[7, 8, 8\] must be multiples of 2"),
    (("factor",), [0, 2, 2], r"field 'factor': found \[0, 2, 2\], expected one or three integers in \[1, 64\]"),
    (("classes",), [], r"field 'classes': found \[\], expected a list of 1 to 254 str values"),
    (("classes",), ["cell", "no such thing"], r"field 'classes': unknown class name 'no such thing'"),
    (("normalisation", "scale"), 0, r"field 'normalisation\.scale': found 0, expected a finite number"),
    (("context", "mode"), "exec", r"field 'context\.mode': found \"exec\""),
    (("context", "smooth_sigma"), None, r"field 'context\.smooth_sigma': found null"),
    (("voxel_size_um",), [0.05, -1, 0.05], r"field 'voxel_size_um': found \[0\.05, -1, 0\.05\]"),
    (("weights", "file"), "../weights.safetensors", r"field 'weights\.file': \"?'\.\./weights\.safetensors'"
                                                   r" must be a plain file name"),
    (("weights", "file"), "/etc/passwd", r"field 'weights\.file': '/etc/passwd' must be a plain file name"),
    (("weights", "sha256"), "abc", r"field 'weights\.sha256': expected 64 lower-case hex digits, got 'abc'"),
    (("stage1", "unet", "out_channels"), 4, r"field 'stage1\.unet': maps 1 channels to 4, expected 1 to 3"),
    # stage 2 of this file takes the LAC and 2 context channels; mode "none" gives it none
    (("context", "mode"), "none", r"field 'stage2\.unet': maps 3 channels to 3, expected 1 to 3"),
    (("stage2", "temperature"), 0, r"field 'stage2\.temperature': found 0, expected a finite number in \[0\.25, 10\]"),
    (("stage2", "temperature"), "2", r"field 'stage2\.temperature': found \"2\""),
])
def test_each_field_is_checked_before_anything_is_built(saved, tmp_path, field, value, message) -> None:
    def edit(meta):
        obj = meta
        for key in field[:-1]:
            obj = obj[key]
        obj[field[-1]] = value

    folder = _edited(saved, tmp_path, edit)
    start = time.perf_counter()
    with pytest.raises(FormatError, match=message) as info:
        CascadeModel.load(folder)
    assert time.perf_counter() - start < 2
    assert str(folder / "model.json") in str(info.value)


def test_missing_field_is_named(saved, tmp_path) -> None:
    folder = _edited(saved, tmp_path, lambda meta: meta["context"].pop("mode") and None)
    with pytest.raises(FormatError, match=r"field 'context\.mode': found nothing \(missing\)"):
        CascadeModel.load(folder)


def test_files_from_before_temperature_scaling_keep_the_softmax(saved, tmp_path) -> None:
    folder = _edited(saved, tmp_path, lambda meta: meta["stage2"].pop("temperature") and None)
    assert CascadeModel.load(folder).temperature == 1.0
    (tmp_path / "b").mkdir()
    folder = _edited(saved, tmp_path / "b", lambda meta: meta["stage2"].update(temperature=1.7))
    assert CascadeModel.load(folder).temperature == 1.7


def test_settings_missing_from_old_files_take_unetconfigs_defaults(saved, tmp_path) -> None:
    def drop(meta):
        meta["stage1"]["unet"].pop("input_to_head")
        meta["stage2"]["unet"].pop("layout")

    model = CascadeModel.load(_edited(saved, tmp_path, drop))
    assert not model.stage1.config.input_to_head and model.stage2.config.layout == "pooled"


def test_deep_nesting_is_refused_before_parsing(saved, tmp_path) -> None:
    folder = _edited(saved, tmp_path, lambda meta: json.dumps(meta)[:-1] + ', "info": ' + "[" * 100000
                     + "]" * 100000 + "}")
    with pytest.raises(FormatError, match=r"JSON nested 100001 levels deep, expected at most 32"):
        CascadeModel.load(folder)


def test_brackets_inside_strings_are_no_nesting(saved, tmp_path) -> None:
    folder = _edited(saved, tmp_path, lambda meta: meta["info"].update(note="[" * 100))
    assert CascadeModel.load(folder).info["note"] == "[" * 100


def test_huge_model_json_is_refused_unread(saved, tmp_path) -> None:
    folder = _edited(saved, tmp_path, lambda meta: meta["info"].update(padding="x" * 2**21))
    with pytest.raises(FormatError, match=r"model\.json: not an sxtlab model: \d+ bytes, expected at most 1048576"):
        CascadeModel.load(folder)


def test_weights_outside_the_folder_through_a_link_are_refused(saved, tmp_path) -> None:
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes((saved / "weights.safetensors").read_bytes())
    folder = _edited(saved, tmp_path, lambda meta: meta["weights"].update(file="link.safetensors"))
    (folder / "link.safetensors").symlink_to(outside)
    with pytest.raises(FormatError, match=r"field 'weights\.file': 'link\.safetensors' is missing or not a "
                                          r"regular file inside"):
        CascadeModel.load(folder)


def test_checksum_is_checked_before_the_tensors_are_read(saved, tmp_path) -> None:
    folder = _edited(saved, tmp_path, lambda meta: None)
    data = bytearray((folder / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"weights\.safetensors: checksum [0-9a-f]{12}… does not match the "
                                          r"recorded [0-9a-f]{12}… \(corrupt or replaced\)"):
        CascadeModel.load(folder)


def _with_weights(saved: Path, tmp_path: Path, tensors: dict, edit=lambda meta: None) -> Path:
    """A model folder whose weights are ``tensors``, with a matching checksum."""
    from safetensors.torch import save

    data = save(tensors)
    folder = _edited(saved, tmp_path, lambda meta: (meta["weights"].update(
        sha256=hashlib.sha256(data).hexdigest()), edit(meta))[-1])
    (folder / "weights.safetensors").write_bytes(data)
    return folder


def test_weights_shapes_are_checked_against_the_config(saved, tmp_path) -> None:
    model = CascadeModel.load(saved)
    tensors = model.state_dict()
    tensors["stage2.head.weight"] = torch.zeros(3, 2, 1, 1, 1, 2)
    folder = _with_weights(saved, tmp_path, tensors)
    with pytest.raises(FormatError, match=r"tensor 'stage2\.head\.weight' is float32 \[3, 2, 1, 1, 1, 2\], "
                                          r"expected float32 \[3, 2, 1, 1, 1\] from the recorded architecture"):
        CascadeModel.load(folder)


def test_missing_and_extra_tensors_are_named(saved, tmp_path) -> None:
    tensors = CascadeModel.load(saved).state_dict()
    tensors.pop("stage1.head.bias")
    tensors["stage1.payload"] = torch.zeros(4)
    folder = _with_weights(saved, tmp_path, tensors)
    with pytest.raises(FormatError, match=r"missing \['stage1\.head\.bias'\], unexpected \['stage1\.payload'\]"):
        CascadeModel.load(folder)


def test_a_too_large_network_is_refused_before_the_weights_are_read(saved, tmp_path) -> None:
    def widen(meta):
        meta["stage2"]["unet"].update(depth=8, base_width=512, max_width=1024)
        meta["stage2"]["patch"] = [128, 128, 128]

    folder = _edited(saved, tmp_path, widen)
    with pytest.raises(FormatError, match=r"describe networks of [\d,]+ parameters, expected at most 25,000,000"):
        CascadeModel.load(folder)


def test_a_not_safetensors_file_with_matching_checksum(saved, tmp_path) -> None:
    data = b"\xff" * 64
    folder = _edited(saved, tmp_path, lambda meta: meta["weights"].update(sha256=hashlib.sha256(data).hexdigest()))
    (folder / "weights.safetensors").write_bytes(data)
    with pytest.raises(FormatError, match=r"not a safetensors file: header length \d+, expected at most 56"):
        CascadeModel.load(folder)


def test_fields_follow_unetconfig(saved, tmp_path, monkeypatch) -> None:
    # A setting added to UNetConfig later is validated by its declared type without a change here.
    import dataclasses

    import sxtlab.unet as unet

    @dataclasses.dataclass(frozen=True)
    class Extended(unet.UNetConfig):
        dropout: float = 0.0

    monkeypatch.setattr(unet, "UNetConfig", Extended)
    folder = _edited(saved, tmp_path, lambda meta: meta["stage1"]["unet"].update(dropout="high"))
    with pytest.raises(FormatError, match=r"'stage1\.unet\.dropout': found \"high\", expected a finite number "
                                          r"in \[-inf, inf\]"):
        CascadeModel.load(folder)
