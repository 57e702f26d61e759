"""The downloader against a real HTTP server on 127.0.0.1: every case ends in a verified file or a clear error,
never in a partial file where the complete one is expected."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time

import pytest

from adagen.io import DownloadError, download

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """Paths choose the behaviour: /file serves with Range support; /drop closes the first response halfway;
    /truncated always stops halfway; /slow sleeps between chunks; anything else is 404."""

    protocol_version = "HTTP/1.1"
    requests_seen: list[tuple[str, str | None]]

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_GET(self):
        self.server.requests_seen.append((self.path, self.headers.get("Range")))
        if self.path not in ("/file", "/drop", "/truncated", "/slow"):
            self.send_error(404, "Not Found")
            return
        start = 0
        if (header := self.headers.get("Range")) and self.path != "/truncated":
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        first_drop = self.path == "/drop" and sum(path == "/drop" for path, _ in self.server.requests_seen) == 1
        if self.path == "/truncated" or first_drop:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path == "/slow":
            for offset in range(0, len(body), 16384):
                self.wfile.write(body[offset : offset + 16384])
                self.wfile.flush()
                time.sleep(0.05)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.requests_seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def leftovers(folder):
    return sorted(path.name for path in folder.iterdir())


def test_complete_download_is_verified_and_not_fetched_twice(server, tmp_path):
    httpd, base = server
    target = tmp_path / "weights.pt"
    assert download(f"{base}/file", target, size=len(PAYLOAD), sha256=PAYLOAD_SHA256, progress=False) == PAYLOAD_SHA256
    assert target.read_bytes() == PAYLOAD and leftovers(tmp_path) == ["weights.pt"]
    download(f"{base}/file", target, sha256=PAYLOAD_SHA256, progress=False)
    assert len(httpd.requests_seen) == 1  # the existing file was verified, not fetched again


def test_interrupted_download_resumes_with_range(server, tmp_path):
    httpd, base = server
    target = tmp_path / "weights.pt"
    download(f"{base}/drop", target, sha256=PAYLOAD_SHA256, backoff_s=0.01, progress=False)
    assert target.read_bytes() == PAYLOAD
    assert httpd.requests_seen == [("/drop", None), ("/drop", f"bytes={len(PAYLOAD) // 2}-")]


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    httpd, base = server
    (tmp_path / ".weights.pt.part").write_bytes(PAYLOAD[:1000])
    download(f"{base}/file", tmp_path / "weights.pt", sha256=PAYLOAD_SHA256, progress=False)
    assert (tmp_path / "weights.pt").read_bytes() == PAYLOAD
    assert httpd.requests_seen == [("/file", "bytes=1000-")]


def test_truncated_every_time_gives_a_clear_error_and_no_file(server, tmp_path):
    _, base = server
    with pytest.raises(DownloadError, match=r"weights\.pt: failed after 3 attempts"):
        download(f"{base}/truncated", tmp_path / "weights.pt", retries=2, backoff_s=0.01, progress=False)
    assert leftovers(tmp_path) == []


def test_wrong_checksum_names_the_file_and_leaves_nothing(server, tmp_path):
    _, base = server
    with pytest.raises(DownloadError, match=r"weights\.pt: sha256 mismatch, expected 0+, got " + PAYLOAD_SHA256):
        download(f"{base}/file", tmp_path / "weights.pt", sha256="0" * 64, progress=False)
    assert leftovers(tmp_path) == []


def test_wrong_size_names_the_file(server, tmp_path):
    _, base = server
    with pytest.raises(DownloadError, match=r"weights\.pt: expected 5 bytes, got 102400"):
        download(f"{base}/file", tmp_path / "weights.pt", size=5, progress=False)
    assert leftovers(tmp_path) == []


def test_not_found_is_not_retried(server, tmp_path):
    httpd, base = server
    with pytest.raises(DownloadError, match=r"weights\.pt: HTTP 404"):
        download(f"{base}/missing", tmp_path / "weights.pt", backoff_s=10, progress=False)
    assert leftovers(tmp_path) == [] and len(httpd.requests_seen) == 1


def test_slow_server_times_out_then_resumes_to_a_verified_file(server, tmp_path):
    httpd, base = server
    target = tmp_path / "weights.pt"
    # 50 ms between 16 KiB chunks: a 30 ms read timeout cuts each attempt short, each resume gets further.
    download(f"{base}/slow", target, sha256=PAYLOAD_SHA256, timeout_s=0.03, retries=20, backoff_s=0.001,
             progress=False)
    assert target.read_bytes() == PAYLOAD and leftovers(tmp_path) == ["weights.pt"]
    assert len(httpd.requests_seen) > 1 and all(header for _, header in httpd.requests_seen[1:])


def test_mirror_path_is_copied_and_verified(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "weights.pt").write_bytes(PAYLOAD)
    out = tmp_path / "out"
    assert download(str(mirror / "weights.pt"), out / "weights.pt", sha256=PAYLOAD_SHA256) == PAYLOAD_SHA256
    assert download((mirror / "weights.pt").as_uri(), out / "copy.pt", size=len(PAYLOAD)) == PAYLOAD_SHA256
    with pytest.raises(DownloadError, match="no such file"):
        download(str(mirror / "absent.pt"), out / "absent.pt")
    assert leftovers(out) == ["copy.pt", "weights.pt"]


def test_registry_names_every_full_scale_asset_with_its_license():
    from adagen.assets import load_registry

    registry = load_registry()
    expected = {"dit-xl-2-256", "sit-xl-2-256", "var-d16", "var-d30", "var-vqvae", "maskgit-l", "maskgit-vqgan",
                "kl-f8-vae", "dino-vits16", "fid-inception", "adagen-policy-maskgit", "adagen-policy-dit",
                "adagen-policy-sit", "adagen-policy-var-d16", "adagen-policy-var-d30"}
    assert expected <= set(registry)
    assert all(asset.url.startswith("https://") and asset.filename and asset.license for asset in registry.values())
    assert registry["dit-xl-2-256"].license == "CC-BY-NC-4.0" and "non-commercial" in registry["dit-xl-2-256"].notice


def test_fetch_records_the_hash_at_first_download_and_verifies_later(server, tmp_path):
    import dataclasses

    from adagen.assets import Asset, fetch, record_path
    from adagen.io import load_json

    httpd, base = server
    asset = Asset(name="toy", url=f"{base}/file", filename="toy.pt", license="CC-BY-NC-4.0", notice="non-commercial")
    said = []
    path = fetch(asset, tmp_path / "assets", progress=False, say=said.append)
    assert path.read_bytes() == PAYLOAD and said == ["toy: non-commercial"]
    record = load_json(record_path(path))
    assert record["sha256"] == PAYLOAD_SHA256 and record["size"] == len(PAYLOAD) and record["license"] == "CC-BY-NC-4.0"
    fetch(asset, tmp_path / "assets", progress=False, say=said.append)
    assert len(httpd.requests_seen) == 1 and len(said) == 1  # verified against the record, not fetched again
    path.write_bytes(PAYLOAD[:-1] + b"\x00")  # the file changed on disk since its first fetch
    with pytest.raises(DownloadError, match=r"toy\.pt: sha256 mismatch"):
        fetch(asset, tmp_path / "assets", progress=False)
    # A pinned hash in the registry wins over the record: a wrong pin fails before anything is kept.
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(dataclasses.replace(asset, sha256="f" * 64), tmp_path / "other", progress=False)
    assert not (tmp_path / "other" / "toy.pt").exists()


def test_mirror_replaces_the_url(server, tmp_path):
    from adagen.assets import Asset, fetch

    httpd, _ = server
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "toy.pt").write_bytes(PAYLOAD)
    asset = Asset(name="toy", url="https://unreachable.invalid/toy.pt", filename="toy.pt", license="MIT",
                  sha256=PAYLOAD_SHA256)
    assert fetch(asset, tmp_path / "assets", mirror=mirror, progress=False).read_bytes() == PAYLOAD
    assert httpd.requests_seen == []


def test_fetch_command_errors_name_the_problem(tmp_path):
    from click.testing import CliRunner

    from adagen.cli import main

    result = CliRunner().invoke(main, ["fetch", "no-such-model", "--to", str(tmp_path)])
    assert result.exit_code != 0 and "unknown asset(s) ['no-such-model']" in result.output
    listing = CliRunner().invoke(main, ["fetch", "--list"])
    assert listing.exit_code == 0 and "dit-xl-2-256" in listing.output and "CC-BY-NC-4.0" in listing.output
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "var_d16.pth").write_bytes(PAYLOAD)
    fetched = CliRunner().invoke(main, ["fetch", "var-d16", "--to", str(tmp_path / "assets"),
                                        "--mirror", str(tmp_path / "mirror")])
    assert fetched.exit_code == 0, fetched.output
    assert (tmp_path / "assets" / "var_d16.pth").read_bytes() == PAYLOAD
