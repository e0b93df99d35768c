"""`maebench data get` against a local HTTP server (127.0.0.1, no outside network) serving look-alike archives
built here with the real archives' top-level structure: resume after a cut connection, a server that ignores
Range, checksum and size mismatches, hostile archives, a full disk, and the unpacked layout passing `data check`
and a short `maebench eval`."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import shutil
import tarfile
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from helpers import one_line_error

from maebench import data_sources
from maebench import download as download_module
from maebench import unpack as unpack_module
from maebench.cli import main
from maebench.data_sources import SOURCES, Archive, Source
from maebench.dataset_get import get_dataset
from maebench.download import apply_mirror, download
from maebench.downstream.toy import TOY_MARKER, build_toy
from maebench.errors import MaebenchError
from maebench.unpack import unpack


class Server:
    """A tiny file server: `files[path] = bytes`; honours `Range: bytes=N-` unless `ignore_range`; with
    `cut_after[path] = n` the next response for that path sends n body bytes and drops the connection."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = server.files.get(self.path)
                wanted = self.headers.get("Range")
                server.requests.append((self.path, wanted))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if wanted and not server.ignore_range:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = server.cut_after.pop(self.path, None)
                self.wfile.write(body[start:] if cut is None else body[start:start + cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _random_bytes(n: int, seed: int = 0) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _tar_gz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


# ---------------------------------------------------------------- downloads


def test_mirror_replaces_scheme_and_host_only():
    url = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
    assert apply_mirror(url, "https://cache.local:8080/mirror/") == \
        "https://cache.local:8080/mirror/data/speech_commands_v0.02.tar.gz"
    assert apply_mirror(url, None) == url


def test_download_resumes_after_a_cut_connection(server, tmp_path):
    body = _random_bytes(3 << 20)
    server.files["/a.bin"] = body
    server.cut_after["/a.bin"] = 1_200_000
    target = download(f"{server.url}/a.bin", tmp_path / "a.bin", size=len(body), sha256=_sha256(body), quiet=True)
    assert target.read_bytes() == body
    assert not (tmp_path / "a.bin.part").exists()
    # the second request asked only for what the cut connection had not delivered
    assert server.requests == [("/a.bin", None), ("/a.bin", "bytes=1200000-")]


def test_interrupted_part_file_continues_and_a_range_ignoring_server_restarts(server, tmp_path):
    body = _random_bytes(500_000, seed=1)
    server.files["/b.bin"] = body
    (tmp_path / "b.bin.part").write_bytes(body[:123_456])  # what a Ctrl-C left behind
    download(f"{server.url}/b.bin", tmp_path / "b.bin", size=len(body), sha256=_sha256(body), quiet=True)
    assert (tmp_path / "b.bin").read_bytes() == body and server.requests[-1] == ("/b.bin", "bytes=123456-")

    server.ignore_range = True
    (tmp_path / "c.bin.part").write_bytes(b"stale bytes from another file")
    server.files["/c.bin"] = body
    download(f"{server.url}/c.bin", tmp_path / "c.bin", size=len(body), sha256=_sha256(body), quiet=True)
    assert (tmp_path / "c.bin").read_bytes() == body


def test_checksum_mismatch_names_both_sums_and_keeps_the_file(server, tmp_path):
    body = _random_bytes(10_000, seed=2)
    server.files["/d.bin"] = body
    wrong = "0" * 64
    with pytest.raises(MaebenchError) as excinfo:
        download(f"{server.url}/d.bin", tmp_path / "d.bin", size=len(body), sha256=wrong, quiet=True)
    one_line_error(excinfo, _sha256(body), wrong, "d.bin.mismatch")
    assert (tmp_path / "d.bin.mismatch").read_bytes() == body and not (tmp_path / "d.bin").exists()
    with pytest.raises(MaebenchError) as excinfo:
        download(f"{server.url}/d.bin", tmp_path / "e.bin", size=len(body) + 1, quiet=True)
    one_line_error(excinfo, str(len(body)), str(len(body) + 1))


def test_real_table_checksum_refuses_a_look_alike_via_mirror(server, tmp_path):
    """KS2's published size/sha256 (TFDS + torchaudio) is what the download is held to, mirror or not."""
    fake = _tar_gz([_file("./yes/0a7c2a8d_nohash_0.wav")])
    server.files["/data/speech_commands_v0.02.tar.gz"] = fake
    with pytest.raises(MaebenchError) as excinfo:
        get_dataset(SOURCES["ks2"], tmp_path / "data", mirror=server.url, quiet=True)
    one_line_error(excinfo, "speech_commands_v0.02.tar.gz", "2428923189", str(len(fake)))
    assert not (tmp_path / "data" / "speech_commands_v0.02").exists()


def test_full_disk_while_downloading_is_one_error_and_the_rerun_resumes(server, tmp_path, monkeypatch):
    body = _random_bytes(3 << 20, seed=3)
    server.files["/f.bin"] = body
    real_open = open

    class FillingFile:
        def __init__(self, handle) -> None:
            self.handle, self.written = handle, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.handle.close()

        def write(self, block: bytes) -> int:
            if self.written >= 1 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(block)
            return self.handle.write(block)

    monkeypatch.setattr(download_module, "open", lambda *a, **k: FillingFile(real_open(*a, **k)), raising=False)
    with pytest.raises(MaebenchError) as excinfo:
        download(f"{server.url}/f.bin", tmp_path / "f.bin", size=len(body), sha256=_sha256(body), quiet=True)
    one_line_error(excinfo, "disk full", "f.bin.part")
    kept = (tmp_path / "f.bin.part").stat().st_size
    assert 0 < kept < len(body)
    monkeypatch.undo()
    download(f"{server.url}/f.bin", tmp_path / "f.bin", size=len(body), sha256=_sha256(body), quiet=True)
    assert (tmp_path / "f.bin").read_bytes() == body and server.requests[-1] == ("/f.bin", f"bytes={kept}-")


# ---------------------------------------------------------------- unpacking


@pytest.mark.parametrize("entries, needle", [
    ([_file("ok.txt"), _file("../evil.txt")], "outside the target"),
    ([_file("/tmp/evil-abs.txt")], "absolute path"),
    ([_link("data/escape", "../../outside")], "link"),
    ([_link("data/hard", "../../etc/passwd", tarfile.LNKTYPE)], "link"),
    ([_link("abs", "/etc/passwd")], "link"),
])
def test_hostile_tar_is_refused_before_anything_is_written(tmp_path, entries, needle):
    archive = tmp_path / "hostile.tar.gz"
    archive.write_bytes(_tar_gz(entries))
    with pytest.raises(MaebenchError) as excinfo:
        unpack(archive, tmp_path / "out" / "target")
    one_line_error(excinfo, str(archive), needle)
    assert list((tmp_path / "out" / "target").iterdir()) == []
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()


def test_device_files_and_zip_traversal_and_zip_links_are_refused(tmp_path):
    device = tarfile.TarInfo("dev/null-copy")
    device.type = tarfile.CHRTYPE
    archive = tmp_path / "dev.tar.gz"
    archive.write_bytes(_tar_gz([(device, None)]))
    with pytest.raises(MaebenchError) as excinfo:
        unpack(archive, tmp_path / "t1")
    one_line_error(excinfo, "device")

    zipped = tmp_path / "evil.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("ESC-50-master/../../evil.txt", b"x")
    with pytest.raises(MaebenchError) as excinfo:
        unpack(zipped, tmp_path / "t2")
    one_line_error(excinfo, "outside the target")

    linked = tmp_path / "link.zip"
    with zipfile.ZipFile(linked, "w") as zf:
        info = zipfile.ZipInfo("ESC-50-master/audio")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc")
    with pytest.raises(MaebenchError) as excinfo:
        unpack(linked, tmp_path / "t3")
    one_line_error(excinfo, "link")


def test_a_declared_size_far_beyond_the_budget_is_refused(tmp_path):
    """A tar.gz of 100 MB of zeros is ~100 kB: 1000x its size, a bomb by the budget's rule (20x, at least 64 MiB)."""
    big = tarfile.TarInfo("zeros.wav")
    big.size = 100 << 20
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.addfile(big, io.BytesIO(bytes(big.size)))
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(buffer.getvalue())
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(MaebenchError) as excinfo:
        unpack(archive, tmp_path / "t")
    one_line_error(excinfo, "bomb.tar.gz", f"{100 << 20:,}", "budget")
    assert list((tmp_path / "t").iterdir()) == []


def test_too_little_free_space_to_unpack_is_refused(tmp_path, monkeypatch):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_gz([_file("a/b.wav", bytes(50_000))]))
    monkeypatch.setattr(unpack_module.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, free=1000))
    with pytest.raises(MaebenchError) as excinfo:
        unpack(archive, tmp_path / "t")
    one_line_error(excinfo, "not enough space", "50,000")


# ---------------------------------------------------------------- whole datasets


def _esc50_zip(tmp_path: Path) -> tuple[bytes, int]:
    """The GitHub archive's structure: ESC-50-master/{audio/*.wav, meta/esc50.csv, README.md}."""
    root = build_toy("esc50", tmp_path / "esc_build", size="small")
    (root / TOY_MARKER).unlink()
    (root / "README.md").write_text("# ESC-50 look-alike\n")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("ESC-50-master/", b"")
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, f"ESC-50-master/{path.relative_to(root).as_posix()}")
    return buffer.getvalue(), len(list((root / "audio").glob("*.wav")))


def test_esc50_get_check_and_eval_through_the_cli(server, tmp_path, monkeypatch, capsys):
    body, clips = _esc50_zip(tmp_path)
    server.files["/karolpiczak/ESC-50/archive/master.zip"] = body
    row = SOURCES["esc50"]
    monkeypatch.setitem(SOURCES, "esc50", replace(row, archives=(replace(row.archives[0], expect=("audio/*.wav",
                                                                                                  clips)),)))
    monkeypatch.setenv("MAEBENCH_MIRROR", server.url)
    root = tmp_path / "data"
    assert main(["data", "get", "esc50", "-o", str(root), "--dry-run"]) == 0
    assert f"{server.url}/karolpiczak/ESC-50/archive/master.zip" in capsys.readouterr().out
    assert not root.exists()

    assert main(["data", "get", "esc50", "-o", str(root), "--quiet"]) == 0
    out = capsys.readouterr().out
    data = root / "ESC-50-master"
    assert f"maebench eval --task esc50 --data {data}" in out
    assert len(list((data / "audio").glob("*.wav"))) == clips and (data / "meta" / "esc50.csv").is_file()
    assert not list(root.glob(".esc50.get-*")) and not list((root / ".maebench-downloads").iterdir())
    assert main(["data", "check", "--task", "esc50", "--data", str(data)]) == 0
    # a second run only re-checks (no download)
    count = len(server.requests)
    assert main(["data", "get", "esc50", "-o", str(root), "--quiet"]) == 0 and len(server.requests) == count

    out_dir = tmp_path / "runs"
    assert main(["eval", "--task", "esc50", "--data", str(data), "--upstream", "mae_ast_patch:tiny", "--probe",
                 "logreg", "--set", "Cs=[1.0]", "--set", "max_iter=50", "--out", str(out_dir), "--quiet"]) == 0
    (result,) = [json.loads(p.read_text()) for p in out_dir.glob("*/results.json")]
    assert result["task"] == "esc50" and 0 <= result["score"] <= 100


def test_a_folder_the_user_made_is_never_overwritten(server, tmp_path, capsys):
    root = tmp_path / "data"
    (root / "ESC-50-master").mkdir(parents=True)
    (root / "ESC-50-master" / "mine.txt").write_text("keep me")
    assert main(["data", "get", "esc50", "-o", str(root), "--mirror", server.url, "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (root / "ESC-50-master" / "mine.txt").read_text() == "keep me" and server.requests == []


def _ks_tar(root: Path, arcname: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.add(root, arcname=arcname)
    return buffer.getvalue()


def test_ks1_two_archives_one_checked_root(server, tmp_path, capsys):
    """v0.01 unpacks flat (`./word/...`) into speech_commands_v0.01/, the SUPERB test set beside it."""
    toy = build_toy("ks1", tmp_path / "ks1_build", speech_backend="procedural", size="small")
    (toy / TOY_MARKER).unlink()
    train = _ks_tar(toy / "speech_commands_v0.01", ".")
    test = _ks_tar(toy / "speech_commands_test_set_v0.01", ".")
    server.files["/data/speech_commands_v0.01.tar.gz"] = train
    server.files["/data/speech_commands_test_set_v0.01.tar.gz"] = test
    tests = len(list((toy / "speech_commands_test_set_v0.01").glob("*/*.wav")))
    source = Source("ks1", "KS1 look-alike", "CC BY 4.0", "two folders", archives=(
        Archive(f"{server.url}/data/speech_commands_v0.01.tar.gz", "speech_commands_v0.01", size=len(train),
                sha256=_sha256(train)),
        Archive(f"{server.url}/data/speech_commands_test_set_v0.01.tar.gz", "speech_commands_test_set_v0.01",
                expect=("*/*.wav", tests)),
    ), check_task="ks1")
    data, task = get_dataset(source, tmp_path / "data", quiet=True, keep_archives=True)
    assert (data, task) == (tmp_path / "data", "ks1")
    assert main(["data", "check", "--task", "ks1", "--data", str(data)]) == 0
    assert (data / ".maebench-downloads" / "speech_commands_v0.01.tar.gz").read_bytes() == train

    wrong_count = replace(source, archives=(source.archives[0], replace(source.archives[1], expect=("*/*.wav", 3081))))
    with pytest.raises(MaebenchError) as excinfo:
        get_dataset(wrong_count, tmp_path / "other", quiet=True)
    one_line_error(excinfo, f"{tests} files", "expected 3081")
    assert not (tmp_path / "other" / "speech_commands_v0.01").exists()


def test_restricted_data_prints_instructions_and_takes_the_users_archive(tmp_path, capsys):
    assert main(["data", "get", "er", "-o", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "sail.usc.edu" in out and "Session{1..5}" in out

    toy = build_toy("er", tmp_path / "IEMOCAP_full_release", speech_backend="procedural", size="small")
    (toy / TOY_MARKER).unlink()
    archive = tmp_path / "IEMOCAP_full_release.tar.gz"
    archive.write_bytes(_ks_tar(toy, "IEMOCAP_full_release"))
    root = tmp_path / "data"
    assert main(["data", "get", "er", "-o", str(root), "--from", str(archive), "--quiet"]) == 0
    assert f"maebench eval --task er --data {root / 'IEMOCAP'}" in capsys.readouterr().out
    assert main(["data", "check", "--task", "er", "--data", str(root / "IEMOCAP")]) == 0
    assert archive.is_file()  # the user's archive is theirs

    bad = tmp_path / "not_iemocap.tar.gz"
    bad.write_bytes(_tar_gz([_file("stuff/readme.txt")]))
    assert main(["data", "get", "er", "-o", str(tmp_path / "d2"), "--from", str(bad)]) == 2
    assert not (tmp_path / "d2" / "IEMOCAP").exists()


def test_every_row_names_where_its_checksum_comes_from():
    for source in data_sources.SOURCES.values():
        for archive in source.archives:
            if archive.sha256 or archive.md5:
                assert archive.checksum_from != data_sources.NO_CHECKSUM, archive.url
                assert len(archive.sha256 or "") == 64 or len(archive.md5 or "") == 32
            else:
                assert archive.expect is not None or source.check_task, archive.url
    for task, key in data_sources.HEAR_ARCHIVES.items():  # sums read from the Zenodo record at download time
        (archive,) = data_sources.find_source(f"hear:{task}").archives
        assert archive.filename == key and archive.listing and data_sources.HEAR_RECORD in archive.checksum_from


def test_hear_tarball_from_file_lands_as_its_task_folder(tmp_path, capsys):
    """A HEAR 2021 tarball holds tasks/<task folder>/ (task_metadata.json, 16000/...): that folder lands in ROOT."""
    from maebench.downstream.hear_toy import build_hear_toy

    task = build_hear_toy(tmp_path / "build" / "tasks" / "toy-v1.0.0-full")
    (task / TOY_MARKER).unlink()
    archive = tmp_path / "hear-2021.0.6-toy-v1.0.0-full-16000.tar.gz"
    archive.write_bytes(_ks_tar(tmp_path / "build" / "tasks", "tasks"))
    assert main(["data", "get", "hear:toy", "-o", str(tmp_path / "data")]) == 2
    assert "zenodo.org" in capsys.readouterr().out
    assert main(["data", "get", "hear:toy", "-o", str(tmp_path / "data"), "--from", str(archive), "--quiet"]) == 0
    folder = tmp_path / "data" / "toy-v1.0.0-full"
    assert f"--task hear:{folder}" in capsys.readouterr().out
    assert main(["data", "check", "--task", f"hear:{folder}"]) == 0


def test_from_file_is_held_to_the_published_sums_and_left_in_place(tmp_path, capsys):
    fake = tmp_path / "speech_commands_v0.02.tar.gz"
    fake.write_bytes(_tar_gz([_file("./yes/0a7c2a8d_nohash_0.wav")]))
    assert main(["data", "get", "ks2", "-o", str(tmp_path / "data"), "--from", str(fake)]) == 2
    err = capsys.readouterr().err
    assert "expected 2428923189" in err and "--from" in err and len(err.strip().splitlines()) == 1
    assert fake.is_file() and not (tmp_path / "data" / "speech_commands_v0.02").exists()


def _hear_task_at_48k(build: Path, folder: str) -> Path:
    """A HEAR task as the Zenodo release has it: tasks/<folder>/ with its audio only in 48000/ (48 kHz files)."""
    from maebench.downstream.hear_toy import build_hear_toy

    task = build_hear_toy(build / "tasks" / folder)
    (task / TOY_MARKER).unlink()
    for wav in sorted((task / "16000").rglob("*.wav")):
        samples, rate = sf.read(wav, dtype="float32")
        assert rate == 16000
        upsampled = np.interp(np.arange(len(samples) * 3) / 3, np.arange(len(samples)), samples)
        target = task / "48000" / wav.relative_to(task / "16000")
        target.parent.mkdir(parents=True, exist_ok=True)
        sf.write(target, upsampled.astype(np.float32), 48000)
    shutil.rmtree(task / "16000")
    return task


def _zenodo_listing(key: str, body: bytes, md5: str | None = None) -> bytes:
    """Zenodo's `/api/records/ID/files` answer for one file (its documented shape: entries with key, size, checksum)."""
    checksum = md5 or hashlib.md5(body).hexdigest()
    entry = {"key": key, "size": len(body), "checksum": f"md5:{checksum}", "mimetype": "application/gzip",
             "links": {"content": f"/api/records/{data_sources.HEAR_RECORD}/files/{key}/content"}}
    return json.dumps({"enabled": True, "entries": [entry]}).encode()


def test_hear_task_from_zenodo_verified_by_the_records_md5_checks_and_evaluates(server, tmp_path, capsys):
    """`data get hear:beijing_opera`: the md5 and size come from the record's listing; the 48 kHz-only task folder
    lands in ROOT, passes `data check` and evaluates (audio resampled to 16 kHz on reading)."""
    key = data_sources.HEAR_ARCHIVES["beijing_opera"]
    folder = key.removeprefix("hear2021-").removesuffix("-48000.tar.gz")
    _hear_task_at_48k(tmp_path / "build", folder)
    body = _ks_tar(tmp_path / "build" / "tasks", "tasks")
    record = data_sources.HEAR_RECORD
    server.files[f"/records/{record}/files/{key}"] = body
    server.files[f"/api/records/{record}/files"] = _zenodo_listing(key, body, md5="0" * 32)
    root = tmp_path / "data"
    assert main(["data", "get", "hear:beijing_opera", "-o", str(root), "--mirror", server.url, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"expected {'0' * 32}" in err and hashlib.md5(body).hexdigest() in err and len(err.splitlines()) == 1
    assert not (root / folder).exists() and (root / ".maebench-downloads" / f"{key}.mismatch").is_file()

    server.files[f"/api/records/{record}/files"] = _zenodo_listing(key, body)
    (root / ".maebench-downloads" / f"{key}.mismatch").unlink()
    assert main(["data", "get", "hear:beijing_opera", "-o", str(root), "--mirror", server.url, "--quiet"]) == 0
    data = root / folder
    assert f"--task hear:{data}" in capsys.readouterr().out
    assert (data / "task_metadata.json").is_file() and not (data / "16000").exists()
    assert main(["data", "check", "--task", f"hear:{data}"]) == 0
    out_dir = tmp_path / "runs"
    assert main(["eval", "--task", f"hear:{data}", "--upstream", "mae_ast_patch:tiny", "--probe", "logreg",
                 "--set", "Cs=[1.0]", "--set", "max_iter=50", "--out", str(out_dir), "--quiet"]) == 0
    (result,) = [json.loads(p.read_text()) for p in out_dir.glob("*/results.json")]
    assert 0 <= result["score"] <= 100


def test_a_hear_listing_without_the_file_or_unreachable_is_one_line(server, tmp_path, capsys):
    root = tmp_path / "data"
    server.files[f"/api/records/{data_sources.HEAR_RECORD}/files"] = _zenodo_listing("another.tar.gz", b"x")
    assert main(["data", "get", "hear:esc50", "-o", str(root), "--mirror", server.url]) == 2
    err = capsys.readouterr().err
    assert "has no file hear2021-esc50-v2.0.0-full-48000.tar.gz" in err and "--from" in err
    assert len(err.splitlines()) == 1
    assert main(["data", "get", "hear:esc50", "-o", str(root), "--mirror", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cannot read Zenodo's file listing" in err and len(err.splitlines()) == 1
    assert not (root / "esc50-v2.0.0-full").exists()
