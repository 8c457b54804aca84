"""Files that a kill never leaves half-written: atomic whole-file writes and fsynced JSONL lines."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary sibling, fsync, rename: readers see the old file or the new one, never a part
    (and a failed write leaves no temporary file behind)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_output_file(path: Path, option: str = "--out") -> None:
    """A one-line ConfigError, before any work, if `path` cannot be written as a file."""
    from intro_lite.errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a directory; name a file")
    if not path.parent.is_dir():
        raise ConfigError(f"{option} {path}: the directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{option} {path}: not writable")


def check_output_dir(path: Path, option: str = "--out") -> None:
    """A one-line ConfigError, before any work, if `path` cannot be (created and) written as a directory."""
    from intro_lite.errors import ConfigError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: a file is in the way; name a directory")
    nearest = next(p for p in (path, *path.parents) if p.exists())
    if not nearest.is_dir():
        raise ConfigError(f"{option} {path}: {nearest} is a file, not a directory")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: {nearest} is not writable")


def append_jsonl(path: Path, record: dict) -> None:
    """One whole line per write, fsynced: a kill leaves either the full line or none of it."""
    line = json.dumps(record) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """Every record of a JSONL file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def read_jsonl_log(path: Path) -> tuple[list[dict], str]:
    """The records of a log the run appends to, and a note ("" if none) when its last line was torn
    (a kill or a full disk mid-write): that line is dropped. A bad line before the last is an error."""
    from intro_lite.errors import ConfigError

    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    records, note = [], ""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise ConfigError(f"{path}: line {number} is not valid JSON") from None
            note = f"{path}: dropped a torn last line ({len(line)} characters)"
    return records, note


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path, name: str, extra: dict | None = None) -> None:
    """Record every file's size and SHA-256 under `directory` in `name`, written last and atomically:
    the directory is complete exactly when the manifest exists and verify_manifest agrees."""
    directory = Path(directory)
    files = {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != name}
    write_atomic(directory / name, json.dumps({**(extra or {}), "files": files}, indent=1) + "\n")


def verify_manifest(directory: Path, name: str) -> str:
    """"" if every file the manifest lists is there with its recorded size and hash, else why not."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / name).read_text(encoding="utf-8"))
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {name} marker"
    except (ValueError, KeyError, TypeError):
        return f"{name} is not a manifest"
    for rel, want in files.items():
        p = directory / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != want["size"]:
            return f"{rel} has {p.stat().st_size} bytes, {want['size']} were written"
        if _sha256(p) != want["sha256"]:
            return f"{rel} does not match its checksum"
    return ""


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """A matplotlib figure as a PNG, atomically (temporary sibling, then rename), and closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
