"""Bounded inputs in the library: zip bombs and lying zip directories (frontends.zipsafe and
extract_zip), .npz headers that declare more than they hold, ONNX external data totals and
locations, and the spec's list bounds."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from pydantic import ValidationError

from pruning_core import frontends
from pruning_core.errors import DataError, ModelLoadError
from pruning_core.frontends import zipsafe
from pruning_core.frontends.npzcheck import BadNpz, read_npz_header
from pruning_core.frontends.zipsafe import UnsafeZip, check_zip, safe_extract
from pruning_core.ir import weights
from pruning_core.runtime import data
from pruning_core.spec import PruneSpec
from tests.bombs import MiB, declared_4gib_zip, lie_about_sizes, lying_npz, zeros_bomb, zip_bytes

# ------------------------------------------------------------------------------------ zip: refusals


def test_zipsafe_imports_nothing_heavy() -> None:
    code = (
        "import sys, pruning_core.frontends.zipsafe, pruning_core.ir.limits, pruning_core.frontends; "
        "heavy = {'torch', 'onnx', 'numpy'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_deflate_bomb_is_refused_by_ratio_before_extracting(tmp_path: Path) -> None:
    bomb = zeros_bomb(tmp_path / "bomb.zip", 64 * MiB)
    assert bomb.stat().st_size < 1 * MiB
    with pytest.raises(UnsafeZip, match="compression ratio above the limit of 100"):
        safe_extract(bomb, tmp_path / "out", max_unpacked=8 * 1024**3, max_ratio=100)
    assert not (tmp_path / "out" / "weights.bin").exists()
    # Generous ratio: the same archive extracts, every byte of it.
    files = safe_extract(bomb, tmp_path / "ok", max_unpacked=8 * 1024**3, max_ratio=10_000)
    assert sorted(p.name for p in files) == ["model.onnx", "weights.bin"]
    assert (tmp_path / "ok" / "weights.bin").stat().st_size == 64 * MiB


def test_declared_4gib_from_4mb_is_refused_with_the_default_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPA_MAX_UNPACKED_BYTES", raising=False)
    monkeypatch.delenv("SPA_MAX_ZIP_RATIO", raising=False)
    z = tmp_path / "m.zip"
    z.write_bytes(declared_4gib_zip())
    with pytest.raises(ModelLoadError, match="compression ratio above the limit") as e:
        frontends.extract_zip(z, tmp_path / "out")
    assert "Error" not in str(e.value) and str(e.value).count(". ") == 0
    assert not (tmp_path / "out" / "a.bin").exists()


def test_total_above_max_unpacked_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    z = tmp_path / "m.zip"
    z.write_bytes(zip_bytes({"model.onnx": os.urandom(2 * MiB)}))  # ratio 1: only the size counts
    with pytest.raises(UnsafeZip, match="more than the limit of 1048576 bytes"):
        safe_extract(z, tmp_path / "out", max_unpacked=MiB)
    # The library's default comes from the service's variable.
    monkeypatch.setenv("SPA_MAX_UNPACKED_BYTES", str(MiB))
    with pytest.raises(ModelLoadError, match="more than the limit of 1048576 bytes"):
        frontends.open_model(z, tmp_path / "work")


def test_small_archives_are_not_ratio_checked(tmp_path: Path) -> None:
    z = tmp_path / "m.zip"
    z.write_bytes(zip_bytes({"model.onnx": bytes(512 * 1024)}, zipfile.ZIP_DEFLATED))  # ~500x, 512 KiB
    files = safe_extract(z, tmp_path / "out", max_unpacked=MiB, max_ratio=2)
    assert [p.name for p in files] == ["model.onnx"]


def test_member_larger_than_declared_stops_at_the_declared_size(tmp_path: Path) -> None:
    raw = zip_bytes({"model.onnx": b"\x08\x07", "big.bin": b"\x01" * (4 * MiB)}, zipfile.ZIP_DEFLATED)
    z = tmp_path / "liar.zip"
    z.write_bytes(lie_about_sizes(raw, {"big.bin": 1000}))
    with zipfile.ZipFile(z) as zf:  # the directory passes: it declares 1002 bytes
        assert sum(i.file_size for i in check_zip(zf, max_unpacked=MiB, max_ratio=100)) == 1002
    with pytest.raises(UnsafeZip, match="big.bin"):
        safe_extract(z, tmp_path / "out", max_unpacked=MiB)
    assert not (tmp_path / "out" / "big.bin").exists()  # the partial file is removed
    with pytest.raises(ModelLoadError, match="big.bin"):
        frontends.extract_zip(z, tmp_path / "out2")


def test_writer_counts_real_bytes_against_the_budget(tmp_path: Path) -> None:
    z = tmp_path / "m.zip"
    z.write_bytes(zip_bytes({"a.bin": b"\x01" * 100}))
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo("a.bin")
        with pytest.raises(UnsafeZip, match="larger than its declared size"):
            zipsafe._write_member(zf, info, tmp_path / "a.bin", budget=10)
        assert not (tmp_path / "a.bin").exists()
        assert zipsafe._write_member(zf, info, tmp_path / "a.bin", budget=100) == 100


@pytest.mark.parametrize("member", ["../evil.onnx", "/abs/evil.onnx", "a/../../evil.onnx", "C:/evil.onnx",
                                    "a\\..\\evil.onnx"])
def test_unsafe_names_are_refused(tmp_path: Path, member: str) -> None:
    z = tmp_path / "bad.zip"
    z.write_bytes(zip_bytes({member: b"x"}))
    with pytest.raises(ModelLoadError, match="unsafe path"):
        frontends.extract_zip(z, tmp_path / "out")
    assert not (tmp_path / "evil.onnx").exists()


def test_symlinks_too_many_members_and_escape_through_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = zipfile.ZipInfo("model.onnx")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(link, "/etc/passwd")
    (tmp_path / "link.zip").write_bytes(buf.getvalue())
    with pytest.raises(ModelLoadError, match="symbolic link"):
        frontends.extract_zip(tmp_path / "link.zip", tmp_path / "out")

    monkeypatch.setattr(zipsafe, "MAX_MEMBERS", 3)
    (tmp_path / "many.zip").write_bytes(zip_bytes({f"m{i}.bin": b"x" for i in range(4)}))
    with pytest.raises(UnsafeZip, match="4 members, more than the limit of 3"):
        safe_extract(tmp_path / "many.zip", tmp_path / "out", max_unpacked=MiB)

    # A target folder that already holds a link out: the resolved path is checked, not just the name.
    outside, dest = tmp_path / "outside", tmp_path / "dest"
    outside.mkdir()
    dest.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    (tmp_path / "via.zip").write_bytes(zip_bytes({"sub/evil.onnx": b"x"}))
    with pytest.raises(UnsafeZip, match="leaves the target"):
        safe_extract(tmp_path / "via.zip", dest, max_unpacked=MiB)
    assert not (outside / "evil.onnx").exists()


# ------------------------------------------------------------------------------------------- npz


def test_npz_declaring_a_huge_array_is_refused_before_allocating(tmp_path: Path, attn_onnx: Path) -> None:
    from pruning_core.ir import graph

    p = lying_npz(tmp_path / "d.npz", (10**12,))
    assert p.stat().st_size < 1024
    with pytest.raises(BadNpz, match="declares 4000000000000 bytes, more than the limit"):
        read_npz_header(p, max_unpacked=8 * 1024**3)
    with pytest.raises(DataError, match="declares 4000000000000 bytes") as e:
        data.load_npz(p, graph.load(attn_onnx))
    assert "Error" not in str(e.value)


def test_npz_declaring_more_than_its_member_holds_is_refused(tmp_path: Path) -> None:
    p = lying_npz(tmp_path / "d.npz", (1000,))  # 4000 bytes declared, 16 present
    with pytest.raises(BadNpz, match="declares 4000 bytes but its member holds 16"):
        read_npz_header(p, max_unpacked=MiB)
    good = tmp_path / "good.npz"
    np.savez_compressed(good, x=np.zeros((3, 5), np.float32), labels=np.arange(3))
    assert read_npz_header(good, max_unpacked=MiB) == {
        "x": {"shape": [3, 5], "dtype": "float32"}, "labels": {"shape": [3], "dtype": "int64"}}


# ----------------------------------------------------------------------------- external data


def external_model(folder: Path, locations: list[str], data_bytes: int = 8192) -> Path:
    """x + w0 + w1 + ...: each w (float32, data_bytes / 4) stored at offset 0 of its location."""
    folder.mkdir(parents=True, exist_ok=True)
    n = data_bytes // 4
    nodes, inits, prev = [], [], "x"
    for i, loc in enumerate(locations):
        t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[n])
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", loc), ("offset", "0"), ("length", str(n * 4))):
            e = t.external_data.add()
            e.key, e.value = k, v
        inits.append(t)
        nodes.append(helper.make_node("Add", [prev, f"w{i}"], [f"y{i}"]))
        prev = f"y{i}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [n])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    path = folder / "m.onnx"
    path.write_bytes(m.SerializeToString())
    return path


def test_external_data_total_is_bounded_before_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = external_model(tmp_path / "m", ["w.data"] * 3)  # three tensors on the same 8 KiB
    np.arange(2048, dtype=np.float32).tofile(tmp_path / "m" / "w.data")
    with pytest.raises(ModelLoadError, match="24576 bytes of external data, more than the limit of 16384"):
        weights.read(path, max_external=16384)
    _, arrays = weights.read(path, max_external=24576)
    assert all(np.array_equal(arrays[f"w{i}"], np.arange(2048, dtype=np.float32)) for i in range(3))
    monkeypatch.setenv("SPA_MAX_UNPACKED_BYTES", "20000")  # the library default follows the service's
    with pytest.raises(ModelLoadError, match="more than the limit of 20000 bytes"):
        weights.read(path)


def test_external_data_locations_stay_in_the_model_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside.data"
    np.zeros(2048, np.float32).tofile(outside)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "link.data").symlink_to(outside)
    for loc in ("../outside.data", str(outside), "link.data"):
        path = external_model(folder, [loc])
        with pytest.raises(ModelLoadError, match="leaves the model's folder"):
            weights.read(path)


# ----------------------------------------------------------------------------------------- spec


@pytest.mark.parametrize("field,value", [
    ("ignore", ["conv*"] * 257),
    ("ignore", ["x" * 513]),
    ("ignore", [""]),
    ("input_shapes", {f"in{i}": [1, 3] for i in range(65)}),
    ("input_shapes", {"x": [1] * 9}),
    ("input_shapes", {"x": [1, 2**31]}),
    ("input_shapes", {"x" * 257: [1, 3]}),
    ("criterion", "l" * 65),
    ("seed", -1),
    ("calibration", {"dataset_id": "d" * 65}),
])
def test_spec_lists_and_strings_are_bounded(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        PruneSpec.model_validate({field: value})


def test_spec_bounds_keep_ordinary_specs() -> None:
    spec = PruneSpec.model_validate({
        "ignore": ["conv*"] * 256, "input_shapes": {f"in{i}": [1] * 8 for i in range(64)},
        "seed": 2**40, "calibration": {"dataset_id": "a" * 32},
    })
    assert len(spec.ignore) == 256 and len(spec.input_shapes) == 64
