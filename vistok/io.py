"""Files and folders that never lose what a user has: atomic writes, atomic folder replacement, the
user's normal permissions, and the guard every output path goes through before anything is written.

- ``atomic_write_text`` / ``atomic_write_json``: a temporary file beside the target, fsync, rename.
- ``publish_dir(build, dest)``: a folder is built in a temporary folder beside ``dest`` and swapped in
  whole (``renameat2(RENAME_EXCHANGE)`` on Linux, two renames elsewhere): a crash leaves the old one whole.
- ``set_permissions``: files ``0666 & ~umask``, folders ``0777 & ~umask`` (``mkstemp`` and safetensors
  create 0600 files, which colleagues on a shared filesystem cannot read).
- ``guard_output_dir``: what may be written into an existing folder (see its doc).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_MARKERS = ("config.yaml", "checkpoints", "train_summary.json")  # what makes a folder a training run


class OutputError(ValueError):
    """An output path would delete or overwrite something vistok did not write; the message says what."""


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def set_permissions(path: str) -> None:
    """Give ``path`` (recursively, for a folder) the permissions a plain ``open`` would have given."""
    mask = umask()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for f in files:
                if not os.path.islink(os.path.join(root, f)):
                    os.chmod(os.path.join(root, f), 0o666 & ~mask)
    elif os.path.isfile(path):
        os.chmod(path, 0o666 & ~mask)


def atomic_write_text(path: str, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str, what: str = "file"):
    """A JSON file, or an error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} '{path}' is not valid JSON ({e})") from e
    except OSError as e:
        raise ValueError(f"{what} '{path}' cannot be read ({e.strerror or e})") from e


def read_jsonl(path: str) -> list[tuple[int, object]]:
    """(line number, value) of every non-empty line of a JSON-lines file; a line that is not JSON is an error
    naming ``path:line``."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e})") from e
    return out


def fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(err, f"cannot swap '{a}' and '{b}': {os.strerror(err)}")


def temp_dir_beside(dest: str) -> str:
    """A fresh, uniquely named hidden folder next to ``dest`` (same filesystem, so renames are atomic)."""
    dest = os.path.abspath(dest)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    return tempfile.mkdtemp(dir=os.path.dirname(dest), prefix=f".{os.path.basename(dest)}.tmp-")


def publish_dir(tmp: str, dest: str) -> None:
    """Put the finished folder ``tmp`` at ``dest``: atomically replacing an existing ``dest`` (the caller has
    already checked that replacing it is allowed), so ``dest`` is at every moment either the old or the new
    folder. ``tmp`` is consumed."""
    set_permissions(tmp)
    dest = os.path.abspath(dest)
    if not os.path.exists(dest):
        os.replace(tmp, dest)
    elif _exchange(tmp, dest):
        shutil.rmtree(tmp)  # now holds the old folder
    else:  # no atomic exchange here: move the old one aside first, so a crash leaves it (as <dest>.old-*)
        old = tempfile.mkdtemp(dir=os.path.dirname(dest), prefix=f".{os.path.basename(dest)}.old-")
        os.rmdir(old)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old)
    fsync_dir(os.path.dirname(dest))


def is_release_dir(path: str) -> bool:
    """A folder in vistok's release format: a pipeline (pipeline.json) or one model (config.json with a
    model_type beside model.safetensors)."""
    pj = os.path.join(path, "pipeline.json")
    if os.path.isfile(pj):
        try:
            meta = read_json(pj)
        except ValueError:
            return False
        return isinstance(meta, dict) and str(meta.get("format", "")).startswith("vistok-pipeline")
    cj = os.path.join(path, "config.json")
    if os.path.isfile(cj) and os.path.isfile(os.path.join(path, "model.safetensors")):
        try:
            cfg = read_json(cj)
        except ValueError:
            return False
        return isinstance(cfg, dict) and bool(cfg.get("model_type")) and "vistok_version" in cfg
    return False


def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.yaml")) and (
        os.path.isdir(os.path.join(path, "checkpoints")) or os.path.isfile(os.path.join(path, "train_summary.json")))


def guard_output_dir(path: str, flag: str = "--out", overwrite: bool = False) -> None:
    """Refuse to write a release into ``path`` unless that loses nothing.

    Allowed: a path that does not exist, an empty folder, or (with ``overwrite``) a release in vistok's own
    format, which will be replaced atomically. Refused by name: a file, a training run, the repository's
    ``checkpoints/`` root, a folder holding anything else, and an existing release without ``overwrite``."""
    if not os.path.lexists(path):
        return
    shown = f"{flag} {path}"
    if not os.path.isdir(path) or os.path.islink(path):
        raise OutputError(f"{shown}: exists and is not a folder; nothing was written (choose a new folder)")
    real = os.path.realpath(path)
    if real == os.path.realpath(os.path.join(REPO_ROOT, "checkpoints")) or real == os.path.realpath(REPO_ROOT):
        raise OutputError(f"{shown}: is the repository's {'checkpoints/ root' if real != os.path.realpath(REPO_ROOT) else 'root'}, "
                          f"which holds other releases; nothing was written (choose a subfolder, e.g. {path.rstrip('/')}/NAME)")
    if real == os.path.realpath(os.path.expanduser("~")) or real == "/":
        raise OutputError(f"{shown}: is {'the home folder' if real != '/' else '/'}; nothing was written")
    if is_run_dir(path):
        raise OutputError(f"{shown}: is a training run (config.yaml, checkpoints/); releasing into it would delete "
                          f"the run; nothing was written (choose a new folder, e.g. checkpoints/NAME)")
    entries = os.listdir(path)
    if not entries:
        return
    if not is_release_dir(path):
        raise OutputError(f"{shown}: the folder is not empty and is not a vistok release (it holds "
                          f"{', '.join(sorted(entries)[:5])}{', ...' if len(entries) > 5 else ''}); nothing was written "
                          f"(choose a new or empty folder)")
    if not overwrite:
        raise OutputError(f"{shown}: a vistok release is already there; pass --overwrite to replace it (atomically), "
                          f"or choose a new folder")


def write_release_dir(path: str, write, overwrite: bool = False, flag: str = "--out") -> None:
    """``write(tmp_folder)`` builds a release beside ``path``; it is then published atomically. Checked first
    with ``guard_output_dir``; on any failure the temporary folder goes and ``path`` is untouched."""
    guard_output_dir(path, flag, overwrite)
    tmp = temp_dir_beside(path)
    try:
        write(tmp)
        publish_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def guard_result_file(path: str, overwrite: bool, flag: str = "--out") -> None:
    """A JSON result may replace only a vistok result (an object with ``vistok_version``), and only with
    ``overwrite``."""
    if not os.path.lexists(path):
        return
    if not os.path.isfile(path):
        raise OutputError(f"{flag} {path}: exists and is not a file; nothing was written")
    try:
        old = read_json(path)
    except ValueError:
        old = None
    if not (isinstance(old, dict) and "vistok_version" in old):
        raise OutputError(f"{flag} {path}: the file exists and is not a vistok result; nothing was written "
                          f"(choose another file)")
    if not overwrite:
        raise OutputError(f"{flag} {path}: a vistok result is already there; pass --overwrite to replace it")


def open_rgb(path, name: str | None = None):
    """An image file (a path or a binary file object) as an 8-bit RGB PIL image, converting every mode PIL
    reads correctly: 16-bit and 32-bit integer greyscale scaled (not clipped) to 8 bits, float greyscale
    in [0, 1], palette and alpha images composited over white, CMYK / YCbCr / LAB through PIL. Anything
    else is refused naming the file."""
    import numpy as np
    from PIL import Image

    shown = name or path
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                arr = np.asarray(im).astype(np.float64)
                peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
                if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
                    raise ValueError(f"32-bit integer pixels outside 0..65535 (min {arr.min()}, max {arr.max()})")
                im = Image.fromarray(np.round(arr / peak * 255).astype(np.uint8), "L")
            elif mode == "F":
                arr = np.asarray(im).astype(np.float64)
                if not np.isfinite(arr).all() or arr.min(initial=0) < 0 or arr.max(initial=0) > 1:
                    raise ValueError("float pixels outside [0, 1]")
                im = Image.fromarray(np.round(arr * 255).astype(np.uint8), "L")
            if mode == "P" or mode == "PA":
                im = im.convert("RGBA")
            if im.mode in ("RGBA", "LA", "La", "RGBa"):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            return im.convert("RGB")
    except Exception as e:
        raise ValueError(f"cannot read image '{shown}': {type(e).__name__}: {e} (expected a readable image file: "
                         f"any mode PIL opens, 8 or 16 bits)") from e
