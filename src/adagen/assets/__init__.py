"""The registry of full-scale assets (`registry.yaml`) and `fetch`, which brings one to a folder, verified.

Each asset has a URL, a file name, its license and, where known, its size and sha256. Where the registry has
no sha256, the first fetch records what it got in `<file>.source.json` beside the file, and later fetches
verify against that record (DVC pins the same bytes in dvc.lock). A mirror folder (the asset's file name
inside it) or an explicit local path replaces the URL, for clusters with no internet.
"""

from __future__ import annotations

import dataclasses
import os
from importlib import resources
from pathlib import Path

import yaml

from adagen.io import download, load_json, save_json


@dataclasses.dataclass(frozen=True)
class Asset:
    name: str
    url: str
    filename: str
    license: str
    size: int | None = None
    sha256: str | None = None
    notice: str | None = None


def load_registry(path: str | os.PathLike | None = None) -> dict[str, Asset]:
    """Every asset of `registry.yaml` (the packaged one unless `path` names another file) by name."""
    text = Path(path).read_text() if path else resources.files(__package__).joinpath("registry.yaml").read_text()
    return {name: Asset(name=name, **fields) for name, fields in yaml.safe_load(text).items()}


def record_path(destination: Path) -> Path:
    return destination.with_name(destination.name + ".source.json")


def fetch(asset: Asset, folder: str | os.PathLike, *, mirror: str | os.PathLike | None = None,
          local: str | os.PathLike | None = None, progress: bool = True, say=print) -> Path:
    """`folder/<asset.filename>`, downloaded or copied if absent, verified either way; returns its path.

    Source order: `local` (a file), then `mirror/<filename>` if that file exists, then the registry URL.
    """
    destination = Path(folder) / asset.filename
    source = str(local) if local else None
    if source is None and mirror is not None and (Path(mirror) / asset.filename).is_file():
        source = str(Path(mirror) / asset.filename)
    source = source or asset.url
    recorded = load_json(record_path(destination)) if record_path(destination).is_file() else {}
    sha256 = asset.sha256 or (recorded.get("sha256") if destination.is_file() else None)
    size = asset.size or (recorded.get("size") if destination.is_file() else None)
    if asset.notice and not destination.is_file():
        say(f"{asset.name}: {asset.notice}")
    digest = download(source, destination, size=size, sha256=sha256, progress=progress)
    if not recorded or recorded.get("sha256") != digest:
        save_json(record_path(destination), {"name": asset.name, "source": source, "size": destination.stat().st_size,
                                             "sha256": digest, "license": asset.license})
    return destination


def fetch_named(name: str, assets_params: dict | None, *, say=print) -> Path:
    """The registry's asset `name`, fetched as a params set's `assets` section says (folder, mirror, local files)."""
    registry = load_registry()
    if name not in registry:
        raise ValueError(f"unknown asset {name!r} (known: {', '.join(sorted(registry))})")
    section = assets_params or {}
    return fetch(registry[name], section.get("folder", "data/assets"), mirror=section.get("mirror"),
                 local=section.get("local", {}).get(name), say=say)
