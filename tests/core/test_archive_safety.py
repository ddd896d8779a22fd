"""Crafted names and targets cannot write outside the archive, clash, or lose a user's files."""

from __future__ import annotations

import os
import string
import sys
import tarfile
import threading

import numpy as np
import pytest
import torch
from torch import nn

import t2n_core
from t2n_core.errors import ArchiveTargetError, ExportInputError
from t2n_core.inspect import inspect_archive
from t2n_core.nnef.archive import TMP_MARK, list_archive, write_archive
from tests.helpers import export_and_check, run_and_compare


class PathNamed(nn.Module):
    """A submodule whose name is a path (``add_module`` refuses only '.')."""

    def __init__(self, name: str):
        super().__init__()
        self.key = name
        self.add_module(name, nn.Linear(4, 3))

    def forward(self, x):
        return getattr(self, self.key)(x)


def _all_files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", ["m", "m.nnef.tgz"])
def test_module_named_like_a_path_stays_inside_the_archive(tmp_path, name):
    outside = tmp_path / "some" / "dir"
    outside.mkdir(parents=True)
    (outside / "head.weight.dat").write_bytes(b"user data")
    model = PathNamed(str(outside / "head"))
    result = export_and_check(model, torch.randn(2, 4), tmp_path, name=name)
    assert (outside / "head.weight.dat").read_bytes() == b"user data"
    members = list(list_archive(result.path))
    assert all(not m.startswith("/") and ".." not in m.split("/") for m in members)
    assert any(m.endswith("head_weight.dat") for m in members), members
    assert set(_all_files(tmp_path)) == {"some", "some/dir", "some/dir/head.weight.dat", name} | {
        f"{name}/{m}" for m in members if name == "m"
    }


def test_file_names_differing_only_in_case_get_distinct_files(tmp_path):
    class Cased(nn.Module):
        def __init__(self):
            super().__init__()
            self.A = nn.Linear(4, 4)
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            return self.A(x) + self.a(x)

    result = export_and_check(Cased(), torch.randn(2, 4), tmp_path, name="m")
    lower = [f.lower() for f in result.files]
    assert len(lower) == len(set(lower)), result.files


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))


@pytest.mark.parametrize("input_name", ["v_0_weight", "v_2_bias", "network"])
def test_user_names_win_over_generated_names(tmp_path, input_name):
    x = torch.randn(2, 3)
    result = export_and_check(_mlp(), x, tmp_path, input_names=[input_name])
    assert result.outputs[0].shape == (2, 3)
    assert result.inputs[0].name == input_name


def test_output_name_that_a_weight_would_get_wins(tmp_path):
    result = export_and_check(_mlp(), torch.randn(2, 3), tmp_path, output_names=["v_0_weight"])
    assert [o.name for o in result.outputs] == ["v_0_weight"]


@pytest.mark.parametrize("bad", ["graph", "1x", "a-b", "é", "fragment", ""])
def test_invalid_user_names_are_refused_with_the_rule(tmp_path, bad):
    with pytest.raises(ExportInputError, match="NNEF identifier: ASCII letters"):
        t2n_core.export(_mlp(), (torch.randn(2, 3),), tmp_path / "m.tgz", input_names=[bad])


def test_properties_with_every_printable_character_load_and_read_back(tmp_path):
    props = {"author": 'Bob\'s "model" \\ C:\\path', "all": string.printable, "k'\"": "v"}
    result = export_and_check(_mlp(), torch.randn(2, 3), tmp_path, properties=props)
    got = inspect_archive(result.path).properties
    assert {k: got[k] for k in props} == props


def test_long_module_path_fits_in_a_tgz_that_tract_reads(tmp_path):
    model = nn.Sequential()
    inner = model
    for i in range(12):  # a 250-character module path
        child = nn.Sequential()
        inner.add_module(f"block_{i:02d}_with_a_rather_long_descriptive_name"[:20], child)
        inner = child
    inner.add_module("relative_position_bias_table_projection", nn.Linear(4, 3))
    path = next(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    assert len(path) >= 250
    result = export_and_check(model, torch.randn(2, 4), tmp_path)
    with tarfile.open(result.path) as tar:
        names = tar.getnames()
    assert max(len(n) for n in names) > 100, names


# ---- overwrite ------------------------------------------------------------------------


def test_failed_check_keeps_the_previous_archive(tmp_path):
    target = tmp_path / "m.nnef.tgz"
    t2n_core.export(_mlp(), (torch.randn(2, 3),), target, progress=False)
    before = target.read_bytes()
    with pytest.raises(t2n_core.CheckMismatchError):
        # atol=-1: no output can pass, as if tract disagreed with PyTorch
        t2n_core.export(
            _mlp(), (torch.randn(2, 3),), target, overwrite=True, check=True, atol=-1.0, rtol=0.0
        )
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nnef.tgz"]


def test_overwrite_through_a_symlink_keeps_the_link(tmp_path):
    real = tmp_path / "v1"
    link = tmp_path / "latest"
    t2n_core.export(_mlp(), (torch.randn(2, 3),), real, progress=False)
    link.symlink_to(real, target_is_directory=True)
    x = torch.randn(2, 3)
    for _ in range(2):
        model = _mlp()
        t2n_core.export(model, (x,), link, overwrite=True, progress=False)
        assert link.is_symlink() and os.path.realpath(link) == str(real)
        run_and_compare(model, x, link)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "v1"]


def test_tgz_overwrite_never_leaves_the_path_missing(tmp_path):
    target = tmp_path / "m.tgz"
    files = [("graph.nnef", lambda: b"version 1.0;\n")]
    write_archive(target, files)
    missing = []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            if not target.exists():
                missing.append(1)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for _ in range(100):
            write_archive(target, files, overwrite=True)
    finally:
        stop.set()
        reader.join()
    assert missing == []


def test_directory_overwrite_is_one_swap(tmp_path):
    target = tmp_path / "m"
    write_archive(target, [("graph.nnef", lambda: b"old"), ("w.dat", lambda: b"x")])
    write_archive(target, [("graph.nnef", lambda: b"new")], overwrite=True)
    assert _all_files(target) == ["graph.nnef"]
    assert (target / "graph.nnef").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_folder_that_is_not_an_archive_is_never_replaced(tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    (target / "graph.nnef").write_text("version 1.0;")
    with pytest.raises(ArchiveTargetError, match=r"not an NNEF archive.*notes\.txt"):
        t2n_core.export(_mlp(), (torch.randn(2, 3),), target, overwrite=True)
    assert (target / "notes.txt").read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.dat").write_bytes(b"x")
    with pytest.raises(ArchiveTargetError, match=r"no graph\.nnef"):
        t2n_core.export(_mlp(), (torch.randn(2, 3),), other, overwrite=True)


def test_stale_temporaries_of_killed_exports_are_removed(tmp_path):
    target = tmp_path / "m.nnef.tgz"
    dead = tmp_path / f".m.nnef.tgz{TMP_MARK}999999999-abc"  # no such process
    alive = tmp_path / f".m.nnef.tgz{TMP_MARK}{os.getppid()}-def"  # a running process
    unrelated = tmp_path / f".other.tgz{TMP_MARK}999999999-abc"
    for d in (dead, alive, unrelated):
        d.mkdir()
        (d / "big.dat").write_bytes(b"0" * 100)
    t2n_core.export(_mlp(), (torch.randn(2, 3),), target, progress=False)
    assert not dead.exists() and alive.exists() and unrelated.exists()


def test_unwritable_target_is_refused_before_capture(tmp_path, monkeypatch):
    export_module = sys.modules["t2n_core.export"]  # the package attribute is the function

    def no_capture(*_a, **_k):
        raise AssertionError("capture ran before the target was checked")

    monkeypatch.setattr(export_module, "capture", no_capture)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if p == tmp_path else real_access(p, m))
    with pytest.raises(ArchiveTargetError, match=rf"cannot write .*m\.tgz.*{tmp_path.name}"):
        t2n_core.export(_mlp(), (torch.randn(2, 3),), tmp_path / "m.tgz")


# ---- readers ---------------------------------------------------------------------------


def _archive_dir(tmp_path):
    return export_and_check(_mlp(), torch.randn(2, 3), tmp_path, name="m").path


def test_fifo_in_a_folder_archive_is_refused_not_waited_on(tmp_path):
    path = _archive_dir(tmp_path)
    os.mkfifo(path / "pipe.dat")
    for read in (inspect_archive, lambda p: t2n_core.run_tract(p, [np.ones((2, 3), "f4")])):
        with pytest.raises(t2n_core.T2NError, match=r"pipe\.dat is not a regular file"):
            read(path)


def test_link_leaving_a_folder_archive_is_refused(tmp_path):
    path = _archive_dir(tmp_path)
    (tmp_path / "secret").write_text("x")
    (path / "extra.dat").symlink_to(tmp_path / "secret")
    with pytest.raises(t2n_core.T2NError, match=r"extra\.dat is a link that leaves the archive"):
        inspect_archive(path)


def _tar_with(tmp_path, extra: tarfile.TarInfo, data: bytes = b"", mode: str = "w:gz"):
    src = _archive_dir(tmp_path)
    out = tmp_path / "crafted.tgz"
    with tarfile.open(out, mode) as tar:
        for p in sorted(src.iterdir()):
            tar.add(p, arcname=p.name)
        import io

        tar.addfile(extra, io.BytesIO(data) if extra.isfile() else None)
    return out


@pytest.mark.parametrize("name", ["../evil.dat", "/abs/evil.dat", "a/../../evil.dat"])
def test_tar_member_outside_the_archive_is_refused(tmp_path, name):
    info = tarfile.TarInfo(name)
    info.size = 3
    path = _tar_with(tmp_path, info, b"abc")
    with pytest.raises(t2n_core.T2NError, match="lies outside the archive"):
        inspect_archive(path)
    with pytest.raises(t2n_core.T2NError, match="lies outside the archive"):
        t2n_core.run_tract(path, [np.ones((2, 3), "f4")])


def test_tar_link_member_is_refused(tmp_path):
    info = tarfile.TarInfo("link.dat")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    path = _tar_with(tmp_path, info)
    with pytest.raises(t2n_core.T2NError, match=r"'link\.dat' is a link"):
        inspect_archive(path)


def test_large_unreferenced_member_is_not_read(tmp_path, monkeypatch):
    import t2n_core.nnef.archive as archive

    monkeypatch.setattr(archive, "MAX_UNREFERENCED_BYTES", 1 << 16)
    info = tarfile.TarInfo("notes.txt")
    info.size = 1 << 20
    path = _tar_with(tmp_path, info, bytes(info.size))
    files = archive.read_archive_files(path, dat_headers_only=True)
    assert "notes.txt" not in files
    assert all(len(b) == 128 for n, b in files.items() if n.endswith(".dat"))
    for use in (inspect_archive, lambda p: t2n_core.run_tract(p, [np.ones((2, 3), "f4")])):
        with pytest.raises(t2n_core.T2NError, match=r"notes\.txt \(1048576 bytes\).*not reference"):
            use(path)  # tract would read the member whole: refused before tract sees it
