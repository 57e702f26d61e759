"""Files that are either complete or absent: atomic writes, verified downloads, safe checkpoint loading.

Every artifact of the pipeline is written to a temporary file in its destination folder and renamed into
place, so a killed stage never leaves a half-written file where a complete one is expected (Snakemake and
DVC would otherwise take it as up to date).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so the final rename is atomic; keep the suffix, since some writers dispatch on it.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates files readable by the owner only; give artifacts the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_json(path: str | os.PathLike, payload: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a file object, so numpy does not append another ".npz"
            np.savez_compressed(handle, **arrays)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """torch.save through a temporary file; payload must hold only tensors and plain Python values."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint as untrusted input: tensors and plain containers only, never pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


class CheckpointMismatch(ValueError):
    """A weights file whose keys or shapes do not fit the network it is loaded into."""


def read_state_dict(path: str | os.PathLike, unwrap: tuple[str, ...] = ("ema", "model", "state_dict"),
                    size: int | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a weights file: safetensors, or a torch file loaded with `weights_only=True` and
    unwrapped from the first of `unwrap` present. `size` (bytes) catches a file swapped since it was verified."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if size is not None and path.stat().st_size != size:
        raise CheckpointMismatch(f"{path} has {path.stat().st_size} bytes, not the {size} it had when fetched")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # tensors only, by construction

        return load_file(path)
    state = load_checkpoint(path)
    for key in unwrap:
        if isinstance(state.get(key), dict):
            return state[key]
    return state


def saved_state_dict(entry: dict) -> dict[str, torch.Tensor]:
    """The weights of a saved network entry: held in it ("state_dict"), or, for downloaded networks, in the
    fetched and verified file it names ("weights", with its "size", checked again: hashing gigabytes at every
    load is not worth it)."""
    if "weights" in entry:
        return read_state_dict(entry["weights"], size=entry["size"])
    return entry["state_dict"]


def load_weights(path: str | os.PathLike, network: torch.nn.Module,
                 unwrap: tuple[str, ...] = ("ema", "model", "state_dict")) -> torch.nn.Module:
    """Load an official (or our) weights file into `network`, strictly, with `weights_only=True`.

    Official files are plain state dicts or wrap one under a key (DiT/SiT training checkpoints keep the EMA
    weights under "ema"); the first of `unwrap` present is taken. A mismatch raises `CheckpointMismatch` naming
    the file and the first missing, unexpected and mis-shaped keys instead of torch's wall of text.
    """
    state = read_state_dict(path, unwrap)
    expected = network.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshaped = [f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}" for key, value in expected.items()
                 if key in state and tuple(state[key].shape) != tuple(value.shape)]
    if missing or unexpected or misshaped:
        problems = [f"{label} ({len(keys)}): {keys[:5]}" for label, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)) if keys]
        raise CheckpointMismatch(f"{path} does not fit {type(network).__name__}: " + "; ".join(problems))
    network.load_state_dict(state, strict=True)
    return network.eval()


def sha256_of_arrays(*arrays: np.ndarray) -> str:
    """Content hash of arrays: dtype, shape and bytes, independent of how they were stored."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def sha256_of_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class DownloadError(RuntimeError):
    """A download that could not produce a verified file (the message names the file and the reason)."""


def _verify(path: Path, *, size: int | None, sha256: str | None, name: str) -> str:
    """The file's sha256 after checking size and hash against what is expected (either may be unknown)."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise DownloadError(f"{name}: expected {size} bytes, got {actual_size}")
    digest = sha256_of_file(path)
    if sha256 is not None and digest != sha256.lower():
        raise DownloadError(f"{name}: sha256 mismatch, expected {sha256.lower()}, got {digest}")
    return digest


def download(url: str, destination: str | os.PathLike, *, size: int | None = None, sha256: str | None = None,
             retries: int = 5, backoff_s: float = 1.0, timeout_s: float = 60.0, chunk_size: int = 1 << 20,
             progress: bool = True) -> str:
    """Fetch `url` to `destination`, verified, and return its sha256.

    Bytes go to `.<name>.part` beside the destination; a dropped connection or a read timeout is retried with
    exponential backoff and resumes from the bytes already there (HTTP Range; a server that ignores Range
    restarts from zero). Only a complete file whose size and sha256 match (each when given) is renamed onto
    `destination`; a mismatch or an HTTP error other than a transient one deletes the partial file and raises
    `DownloadError` naming the file. An existing destination is verified, not fetched again. `url` may be a
    local path or `file://` URL (a mirror), copied the same way.
    """
    destination = Path(destination)
    name = destination.name
    if destination.is_file():
        return _verify(destination, size=size, sha256=sha256, name=str(destination))
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{name}.part")

    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file"):
        source = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme else url)
        if not source.is_file():
            raise DownloadError(f"{name}: no such file {source}")
        shutil.copyfile(source, partial)
    else:
        transient = (urllib.error.URLError, http.client.HTTPException, OSError)  # OSError: resets, timeouts
        for attempt in range(retries + 1):
            offset = partial.stat().st_size if partial.exists() else 0
            request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
            try:
                with urllib.request.urlopen(request, timeout=timeout_s) as response:
                    if offset and response.status != 206:  # Range ignored: the body is the whole file
                        offset = 0
                    length = response.headers.get("Content-Length")
                    total = offset + int(length) if length is not None else size
                    with open(partial, "ab" if offset else "wb") as handle, tqdm(
                            total=total, initial=offset, unit="B", unit_scale=True, desc=name,
                            disable=not progress) as bar:
                        # read1: whatever has arrived, so a read timeout loses no bytes already received
                        while chunk := response.read1(chunk_size):
                            handle.write(chunk)
                            bar.update(len(chunk))
                    if total is not None and partial.stat().st_size < total:
                        raise ConnectionError(f"connection closed at {partial.stat().st_size} of {total} bytes")
                break
            except urllib.error.HTTPError as error:
                if error.code == 416 and offset:  # nothing left past our offset: the partial file is complete
                    break
                if error.code < 500 and error.code not in (408, 429):
                    partial.unlink(missing_ok=True)
                    raise DownloadError(f"{name}: HTTP {error.code} {error.reason} from {url}") from error
                failure: Exception = error
            except transient as error:
                failure = error
            if attempt == retries:
                partial.unlink(missing_ok=True)
                raise DownloadError(f"{name}: failed after {retries + 1} attempts from {url}: {failure}") from failure
            time.sleep(min(backoff_s * 2**attempt, 60.0))
    try:
        digest = _verify(partial, size=size, sha256=sha256, name=name)
    except DownloadError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, destination)
    return digest
