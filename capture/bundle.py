"""Reading capture bundles: the seam between capture and instrument (numpy only, no torch).

A bundle is a directory that other tools can read without Paik::

    manifest.json               everything needed to interpret and reproduce the capture
    maps/step_0007.safetensors  one file per captured step, written whole then renamed into place:
        maps            f16 [block, head, token, F', H', W']
        padding         f16 [block, head, F', H', W']
        maps_uncond     f16 [block, head, uncond_token, F', H', W']   (with --capture-uncond)
        padding_uncond  f16 [block, head, F', H', W']                 (with --capture-uncond)
        x0              f16 [channel, F', h, w]   denoised estimate, latent space (h, w = 2H', 2W')
        preview         u8  [F', h, w, 3]         x0 projected to RGB
    previews/step_0007.mp4      full VAE decode of x0 (only with --preview decode)
    video.mp4                   the generated video, H.264

``manifest["steps"]`` lists only steps whose file is complete, so a run interrupted at step k
opens with its k finished steps. Opening reads the manifest and each step file's header (a few
hundred bytes each) and checks them against each other: types, sane sizes, shapes and dtypes, and
that every step file is a regular file long enough for its tensors. Maps are memory-mapped and
pages are read when a selection touches them.

Typical use::

    b = open_bundle("out/kiss")
    m = b.select("kiss", step=12, block=None, head=None, reduce="mean")   # [F', H', W'] float32
"""

from __future__ import annotations

import errno
import json
import math
import mmap
import os
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import numpy as np

from paik import indices
from paik.errors import BundleError, PaikError
from paik.capture.layout import Layout, check_int, index_ranges
from paik.capture.tokens import Token, TokenGroup, prompt_words, resolve_tokens

FORMAT = "paik-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STEP_FILE = "maps/step_{:04d}.safetensors"

_DTYPES = {"F16": "<f2", "BF16": None, "F32": "<f4", "F64": "<f8", "U8": "u1",
           "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8", "BOOL": "?"}
# A Paik step file's header is well under 1 KiB; safetensors itself allows 100 MB, which is room
# for a hostile file to make every open parse megabytes of JSON.
MAX_HEADER = 1 << 20
MAX_MANIFEST = 64 << 20  # a 10,000-step manifest with timings is about 3 MiB
MAX_FRAMES = 100_000
MAX_VIDEO_SIDE = 16_384
_STEP_NAME = re.compile(r"maps/[A-Za-z0-9_\-][A-Za-z0-9_.\-]*\.safetensors")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")


# -- reading files that may be anything -----------------------------------------------------------
def _what(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _os_reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "a symlink loop"
    if e.errno == errno.ENOENT:
        return "missing"
    return e.strerror or str(e)


def open_regular(path: Path) -> tuple[int, os.stat_result]:
    """An O_RDONLY descriptor of ``path``, refused unless it is a regular file.

    A FIFO would block ``open`` forever and a device could be read without end, so the type is
    checked with ``stat`` before opening, the open itself never blocks (O_NONBLOCK), and ``fstat``
    checks the very file opened (it may have been swapped in between). Raises OSError or
    ValueError with a short reason."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(_what(st.st_mode))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(_what(st.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise ValueError("truncated")
    return data


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors name, "F16"
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


def read_header(fd: int, size: int) -> dict[str, TensorInfo]:
    """Parse and check a safetensors header (8-byte length, JSON object) without reading data:
    every tensor must have a known dtype, a shape and offsets that agree, and lie inside the file.
    Raises ValueError with the reason."""
    if size < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(_pread_exact(fd, 8, 0), "little")
    if n > MAX_HEADER or n > size - 8:
        raise ValueError(f"header length {n:,} is out of range (at most {MAX_HEADER:,}, and within the file's {size:,} bytes)")
    try:
        header = json.loads(_pread_exact(fd, n, 8))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    start, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ValueError(f"tensor {name!r} has no description")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ValueError(f"tensor {name!r} has an unknown dtype {dtype!r}")
        if _DTYPES[dtype] is None:
            raise ValueError(f"tensor {name!r} has unsupported dtype {dtype}")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in shape)):
            raise ValueError(f"tensor {name!r} has a malformed shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
            raise ValueError(f"tensor {name!r} has malformed data_offsets {offsets!r}")
        begin, end = offsets
        if end - begin != math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize:
            raise ValueError(f"tensor {name!r}: data_offsets do not match its shape")
        if start + end > size:
            raise ValueError(f"tensor {name!r} is truncated (the file has {size:,} of {start + end:,} bytes)")
        out[name] = TensorInfo(dtype, tuple(shape), start + begin, start + end)
    return out


def _map(fd: int, size: int, header: dict[str, TensorInfo]) -> dict[str, np.ndarray]:
    """Read-only arrays over one shared memory map of the file: nothing is read until used."""
    mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    out = {}
    for name, t in header.items():
        dtype = np.dtype(_DTYPES[t.dtype])
        if t.end == t.begin:
            out[name] = np.zeros(t.shape, dtype)
        else:
            out[name] = np.ndarray(t.shape, dtype, buffer=mm, offset=t.begin)
    return out


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file (read-only; nothing is read until used).

    Checks the header and that the file is long enough for every tensor, so a truncated or
    corrupt file (or a FIFO, device or symlink loop in its place) is a :class:`BundleError` here
    rather than a crash or a hang later."""
    path = Path(path)
    try:
        fd, st = open_regular(path)
        try:
            return _map(fd, st.st_size, read_header(fd, st.st_size))
        finally:
            os.close(fd)
    except (OSError, ValueError) as e:
        reason = _os_reason(e) if isinstance(e, OSError) else str(e)
        raise BundleError(f"{path}: not a readable safetensors file ({reason})") from None


def _read_manifest(mpath: Path):
    try:
        fd, st = open_regular(mpath)
    except FileNotFoundError:
        raise BundleError(f"{mpath.parent}: not a Paik bundle (no {MANIFEST})") from None
    except (OSError, ValueError) as e:
        reason = _os_reason(e) if isinstance(e, OSError) else str(e)
        raise BundleError(f"{mpath}: cannot read it ({reason})") from None
    try:
        if st.st_size > MAX_MANIFEST:
            raise BundleError(f"{mpath}: {st.st_size:,} bytes is too large for a manifest (at most {MAX_MANIFEST:,})")
        data = os.pread(fd, st.st_size + 1, 0)
        return json.loads(data.decode("utf-8"))
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BundleError(f"{mpath}: corrupt manifest ({e})") from None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class StepInfo:
    index: int  # denoising step (0-based)
    timestep: float
    sigma: float | None
    expert: str  # "transformer" or "transformer_2" (Wan2.2's low-noise expert)
    file: str
    shards: tuple[str, ...] = ()  # a context-parallel capture: every rank's file, rank 0's first


class ShardedArray:
    """One tensor of a sharded step, [..., F', H', W'], over each rank's memory-mapped
    [..., positions/N] part: indexing the leading axes reads only those parts of each file and
    joins them on the position axis, so a selection costs what it does on a single-file step."""

    def __init__(self, parts: list[np.ndarray], latent: tuple[int, int, int]):
        self.parts, self.latent = parts, tuple(latent)
        self.shape = (*parts[0].shape[:-1], *self.latent)
        self.dtype, self.ndim = parts[0].dtype, len(self.shape)

    def _join(self, pieces) -> np.ndarray:
        a = np.concatenate(pieces, axis=-1)
        return a.reshape(*a.shape[:-1], *self.latent)

    def __getitem__(self, key):
        lead = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis or k is None for k in lead) or len(lead) > self.ndim - 3:
            return np.asarray(self)[key]  # reaches into the position axes: join first
        return self._join([p[key] for p in self.parts])

    def __array__(self, dtype=None, copy=None):
        a = self._join(self.parts)
        return a if dtype is None else a.astype(dtype)

    def astype(self, dtype):
        return np.asarray(self).astype(dtype)

    def __len__(self):
        return self.shape[0]


# -- what a manifest may hold ---------------------------------------------------------------------
def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _typed(m: dict, key: str, types, what: str, default=None):
    v = m.get(key, default)
    _need(v is None or isinstance(v, types), f"{key} must be {what}, not {type(v).__name__} {v!r:.40}")
    return v


def _tokens(v, name: str, limit: int) -> list[Token]:
    _need(isinstance(v, list), f"{name} must be a list of tokens")
    _need(len(v) <= limit, f"{name} has {len(v):,} tokens, more than layout.seq_len {limit}")
    out = []
    fields = {"index": int, "id": int, "piece": str, "word": str, "word_index": int, "special": bool}
    for i, t in enumerate(v):
        _need(isinstance(t, dict) and set(t) == set(fields), f"{name}[{i}] must have exactly {', '.join(fields)}")
        for k, typ in fields.items():
            ok = isinstance(t[k], typ) and (typ is bool or not isinstance(t[k], bool))
            _need(ok, f"{name}[{i}].{k} must be {typ.__name__}, not {t[k]!r:.40}")
        _need(t["index"] == i, f"{name}[{i}].index is {t['index']} (tokens are listed in prompt order)")
        check_int(t["word_index"], f"{name}[{i}].word_index", 0, limit)
        out.append(Token(**t))
    return out


def _steps(v, lay: Layout) -> list[StepInfo]:
    _need(isinstance(v, list), "steps must be a list")
    out, seen, planned = [], set(), set(lay.steps)
    for i, s in enumerate(v):
        _need(isinstance(s, dict), f"steps[{i}] must be an object")
        idx = s.get("index")
        _need(isinstance(idx, int) and not isinstance(idx, bool) and idx in planned,
              f"steps[{i}].index {idx!r:.40} is not one of layout.steps")
        _need(idx not in seen, f"steps[{i}]: step {idx} is listed twice")
        seen.add(idx)
        ts, sigma = s.get("timestep"), s.get("sigma")
        _need(isinstance(ts, (int, float)) and not isinstance(ts, bool), f"steps[{i}].timestep must be a number")
        _need(sigma is None or isinstance(sigma, (int, float)) and not isinstance(sigma, bool),
              f"steps[{i}].sigma must be a number or null")
        expert, file = s.get("expert"), s.get("file")
        _need(isinstance(expert, str), f"steps[{i}].expert must be a string")
        # only a plain file in maps/: a manifest must not make Paik read files outside the bundle
        _need(isinstance(file, str) and _STEP_NAME.fullmatch(file) is not None,
              f"steps[{i}].file {file!r:.60} must be a plain maps/NAME.safetensors")
        out.append(StepInfo(idx, float(ts), None if sigma is None else float(sigma), expert, file))
    return out


def _settings(m: dict) -> dict:
    s = _typed(m, "settings", dict, "an object") or {}
    for key, hi in (("frames", MAX_FRAMES), ("width", MAX_VIDEO_SIDE), ("height", MAX_VIDEO_SIDE)):
        if s.get(key) is not None:
            check_int(s[key], f"settings.{key}", 1, hi)
    fps = s.get("fps")
    if fps is not None:
        _need(isinstance(fps, (int, float)) and not isinstance(fps, bool) and 0 < fps <= 1000,
              f"settings.fps must be a number in (0, 1000], not {fps!r:.40}")
    return s


def _check_manifest(m: dict) -> tuple[Layout, list[Token], list[Token], list[StepInfo]]:
    """Every field the reader and the instrument use, typed and bounded (ValueError otherwise)."""
    lay = Layout.from_json(m.get("layout"))
    tokens = _tokens(m.get("tokens"), "tokens", lay.seq_len)
    uncond = _tokens(m.get("negative_tokens", []), "negative_tokens", lay.seq_len)
    bad = [t for t in lay.tokens if t >= len(tokens)]
    _need(not bad, f"layout.tokens {bad[:3]} are not in the prompt's {len(tokens)} tokens")
    bad = [t for t in lay.uncond_tokens if t >= len(uncond)]
    _need(not bad, f"layout.uncond_tokens {bad[:3]} are not in the negative prompt's {len(uncond)} tokens")
    steps = _steps(m.get("steps"), lay)
    _settings(m)
    if lay.shards:
        _need(isinstance(m.get("shards"), dict) and m["shards"].get("count") == len(lay.shards),
              f"shards must describe the {len(lay.shards)} ranks of layout.shards")
    for key, types, what in (("status", str, "a string"), ("prompt", str, "a string"),
                             ("negative_prompt", str, "a string"), ("model", dict, "an object"),
                             ("groups", list, "a list"), ("planned_steps", list, "a list"),
                             ("video", dict, "an object or null"), ("error", str, "a string")):
        _typed(m, key, types, what)
    video = m.get("video")
    if video is not None:
        f = video.get("file")
        _need(isinstance(f, str) and _PLAIN_NAME.fullmatch(f) is not None,
              f"video.file {f!r:.60} must be a plain file name in the bundle")
    for i, g in enumerate(m.get("groups") or []):
        _need(isinstance(g, dict) and isinstance(g.get("query"), str) and isinstance(g.get("tokens"), list),
              f"groups[{i}] must be an object with a query and tokens")
    return lay, tokens, uncond, steps


class Bundle:
    """A capture opened for reading. Cheap to open; maps are read lazily.

    Opening checks the manifest and every step file's header (not its data), so a damaged bundle
    is refused whole with one line before anything reaches the renderer. With ``strict=False``
    (what ``paik info`` uses) damaged step files are listed in :attr:`broken` instead."""

    def __init__(self, path: str | os.PathLike, strict: bool = True):
        self.path = Path(path)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise BundleError(f"{self.path}: no such bundle directory") from None
        except OSError as e:
            raise BundleError(f"{self.path}: cannot open the bundle ({_os_reason(e)})") from None
        if not stat.S_ISDIR(st.st_mode):
            raise BundleError(f"{self.path}: a bundle is a directory (made by 'paik generate --out DIR')")
        mpath = self.path / MANIFEST
        self.manifest = m = _read_manifest(mpath)
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise BundleError(f"{self.path}: not a Paik bundle ({MANIFEST} has no format {FORMAT!r})")
        if m.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"{self.path}: bundle format version {m.get('format_version')!r:.40} is not supported "
                f"(this Paik reads version {FORMAT_VERSION})"
            )
        try:
            self.layout, self.tokens, self.uncond_tokens, self.steps = _check_manifest(m)
        except ValueError as e:
            raise BundleError(f"{mpath}: damaged manifest: {e}; regenerate the bundle "
                              "(or fix the field if you edited it)") from None
        # step -> ((st_dev, st_ino, st_size, st_mtime_ns), arrays): arrays stay valid while the file does
        self._files: dict[int, tuple[tuple, dict[str, np.ndarray]]] = {}
        self._step_pos = {s.index: i for i, s in enumerate(self.steps)}
        self._token_pos = {t: i for i, t in enumerate(self.layout.tokens)}
        self._preview_shape: tuple[int, ...] | None = None
        if self.layout.shards:
            self.steps = self._join_ranks(self.steps)
            self._step_pos = {s.index: i for i, s in enumerate(self.steps)}
        self.broken: dict[int, str] = {}
        for s in self.steps:
            try:
                self._step_header(s)
            except BundleError as e:
                self.broken[s.index] = str(e)
        if self.broken and strict:
            first = next(iter(self.broken.values()))
            more = f" and {len(self.broken) - 1} more (see 'paik info {self.path}')" if len(self.broken) > 1 else ""
            raise BundleError(f"{first}{more}; the bundle is damaged, regenerate it")

    # -- context-parallel shards (paik.capture.parallel) ----------------------------------------
    def _join_ranks(self, steps: list[StepInfo]) -> list[StepInfo]:
        """Steps every rank finished, each with every rank's file; rank r's listing is
        manifest.rank{r}.json (rank 0's is this manifest)."""
        lay = self.layout
        files: dict[int, list[str]] = {s.index: [s.file] for s in steps}
        for r in range(1, len(lay.shards)):
            path = self.path / f"manifest.rank{r}.json"
            try:
                rm = _read_manifest(path)
            except BundleError:
                if self.status == "running":  # that rank had not started writing: nothing of it is complete
                    rm = {"rank": r, "positions": lay.shards[r], "steps": []}
                else:
                    raise
            try:
                _need(isinstance(rm, dict) and rm.get("rank") == r and rm.get("positions") == lay.shards[r],
                      f"it is not rank {r}'s listing for positions {lay.shards[r]}")
                theirs = {s.index: s.file for s in _steps(rm.get("steps"), lay)}
            except ValueError as e:
                raise BundleError(f"{path}: damaged rank listing: {e}; regenerate the bundle") from None
            for idx in list(files):
                if idx in theirs:
                    files[idx].append(theirs[idx])
                else:
                    del files[idx]  # not finished on rank r: not a step of the capture yet
        return [replace(s, shards=tuple(files[s.index])) for s in steps if s.index in files]

    # -- step files ------------------------------------------------------------------------------
    def _expected(self, sharded: bool = False) -> dict[str, tuple[int, ...]]:
        lay = self.layout
        b, h, lat = len(lay.blocks), lay.heads, tuple(lay.latent)
        if sharded:
            lat = (lay.rank_positions,)
        want = {"maps": (b, h, len(lay.tokens), *lat), "padding": (b, h, *lat)}
        if lay.uncond_tokens:
            want["maps_uncond"] = (b, h, len(lay.uncond_tokens), *lat)
            want["padding_uncond"] = (b, h, *lat)
        return want

    def _check_step(self, header: dict[str, TensorInfo]) -> None:
        f = self.layout.latent[0]
        if "maps" not in header:
            raise ValueError("it has no 'maps' tensor")
        for name, shape in self._expected(bool(self.layout.shards)).items():
            t = header.get(name)
            if t is None:
                continue
            if t.dtype != "F16":
                raise ValueError(f"{name} are {t.dtype}, not F16")
            if t.shape != shape:
                raise ValueError(f"{name} have shape {list(t.shape)}, the manifest says {list(shape)}")
        x0, pv = header.get("x0"), header.get("preview")
        if x0 is not None and (len(x0.shape) != 4 or x0.shape[1] != f or max(x0.shape) > MAX_VIDEO_SIDE):
            raise ValueError(f"x0 has shape {list(x0.shape)}, expected [channel, {f}, h, w]")
        if pv is not None:
            if pv.dtype != "U8" or len(pv.shape) != 4 or pv.shape[0] != f or pv.shape[3] != 3 \
                    or max(pv.shape[1:3]) > MAX_VIDEO_SIDE:
                raise ValueError(f"preview is {pv.dtype} {list(pv.shape)}, expected U8 [{f}, h, w, 3]")
            if self._preview_shape is None:
                self._preview_shape = pv.shape
            elif pv.shape != self._preview_shape:
                raise ValueError(f"preview has shape {list(pv.shape)}, other steps {list(self._preview_shape)}")

    def _step_header(self, info: StepInfo, fd_out: list | None = None, file: str | None = None):
        """Open and check one step file's header (``file``: one rank's, default: the step's).
        Returns (identity, size, header); with ``fd_out`` the open descriptor is appended there
        (the caller closes it). A sharded step checks every rank's file."""
        if info.shards and file is None:
            got = [self._step_header(info, fd_out, f) for f in info.shards]
            return tuple(g[0] for g in got), [g[1] for g in got], [g[2] for g in got]
        path = self.path / (file or info.file)
        try:
            fd, st = open_regular(path)
        except OSError as e:
            raise BundleError(f"{path}: step {info.index}'s file is {_os_reason(e)}") from None
        except ValueError as e:
            raise BundleError(f"{path}: step {info.index}'s file is {e}") from None
        try:
            header = read_header(fd, st.st_size)
            self._check_step(header)
        except (OSError, ValueError) as e:
            os.close(fd)
            reason = _os_reason(e) if isinstance(e, OSError) else str(e)
            raise BundleError(f"{path}: step {info.index}'s file is damaged: {reason}") from None
        if fd_out is None:
            os.close(fd)
        else:
            fd_out.append(fd)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), st.st_size, header

    # -- facts ---------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return self.manifest.get("status") or "unknown"

    @property
    def step_indices(self) -> list[int]:
        """Denoising steps whose maps are complete, in order."""
        return [s.index for s in self.steps]

    @property
    def words(self) -> list[str]:
        return prompt_words(self.tokens)

    @property
    def video_path(self) -> Path | None:
        v = self.manifest.get("video")
        if not v:
            return None
        p = self.path / v["file"]
        try:
            return p if stat.S_ISREG(os.stat(p).st_mode) else None  # never hand a FIFO to the decoder
        except OSError:
            return None

    # -- raw arrays ----------------------------------------------------------------------------
    def step_arrays(self, step: int) -> dict[str, np.ndarray]:
        """Every array of one step, memory-mapped (see the module docstring for names/shapes).

        Each call checks (one ``stat``) that the file is still the one mapped: a step file that
        was truncated, deleted or replaced (by a FIFO, say) while playing is a :class:`BundleError`
        here, before a read of a page past its end could kill the process with SIGBUS."""
        if step not in self._step_pos:
            raise PaikError(f"step {step} is not in this bundle; captured steps: {index_ranges(self.step_indices)}")
        info = self.steps[self._step_pos[step]]
        path = self.path / info.file
        cached = self._files.get(step)
        if cached is not None:
            try:
                idents = []
                for f in info.shards or (info.file,):
                    st = os.stat(self.path / f)
                    idents.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
                same = (tuple(idents) if info.shards else idents[0]) == cached[0]
            except OSError:
                same = False
            if same:
                return cached[1]
            del self._files[step]  # changed under us: check it again from scratch
        fds: list[int] = []
        try:
            ident, size, header = self._step_header(info, fds)
            try:
                if info.shards:
                    parts = [_map(fd, n, h) for fd, n, h in zip(fds, size, header)]
                    arrays = {**parts[0]}
                    for name in self._expected():
                        if name in parts[0]:
                            arrays[name] = ShardedArray([p[name] for p in parts], self.layout.latent)
                else:
                    arrays = _map(fds[0], size, header)
            except (OSError, ValueError, KeyError) as e:
                raise BundleError(f"{path}: step {step}'s file cannot be mapped ({e})") from None
        except BundleError as e:
            self.broken[step] = str(e)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        self.broken.pop(step, None)
        self._files[step] = (ident, arrays)
        return arrays

    def preview(self, step: int) -> np.ndarray | None:
        """[F', h, w, 3] uint8 RGB of the denoised estimate at ``step``, or None."""
        return self.step_arrays(step).get("preview")

    # -- selection -----------------------------------------------------------------------------
    def resolve(self, token, uncond: bool = False) -> list[int]:
        """Positions on the captured token axis for a word, phrase, ``#piece`` or prompt index."""
        table = self.uncond_tokens if uncond else self.tokens
        captured = self.layout.uncond_tokens if uncond else self.layout.tokens
        pos = {t: i for i, t in enumerate(captured)}
        if isinstance(token, (int, np.integer)):
            idxs = [int(token)]
            if not 0 <= idxs[0] < len(table):
                raise PaikError(f"token index {token} is out of range: the prompt has {len(table)} tokens")
        elif isinstance(token, TokenGroup):
            idxs = list(token.tokens)
        else:
            if not str(token).strip():
                raise PaikError("the token is empty: name a word of the prompt, 'eos', or #N for piece N")
            idxs = list(resolve_tokens(table, [str(token)])[0].tokens)
        missing = [i for i in idxs if i not in pos]
        if missing:
            names = ", ".join(f"{table[i].piece!r}" for i in missing)
            have = " ".join(dict.fromkeys(table[i].word for i in captured))
            raise PaikError(f"token {token!r} ({names}) was not captured; captured words: {have}")
        return [pos[i] for i in idxs]

    def select(self, token, step=None, block=None, head=None, reduce: str = "mean",
               uncond: bool = False) -> np.ndarray:
        """One map, [F', H', W'] float32.

        ``token``: a word or phrase (pieces summed: the attention the phrase gets), ``#N`` for
        piece N, an int prompt-token index, or ``"padding"`` for the padding mass.
        ``step``, ``block``, ``head``: an index, a list of indices, or None for all; every axis
        given as a list or None is reduced with ``reduce`` ("mean" or "max"). Indices are the
        model's (block 29 is the last block of Wan2.1-1.3B), not positions in the capture.
        """
        if reduce not in ("mean", "max"):
            raise PaikError(f"reduce must be 'mean' or 'max', not {reduce!r}")
        lay = self.layout
        steps = self._pick("step", step, self.step_indices)
        blocks = [lay.blocks.index(b) for b in self._pick("block", block, lay.blocks)]
        if lay.head_mean:
            if head not in (None, "mean"):
                raise PaikError("this bundle stores the mean over heads (captured with --heads mean); use head=None")
            heads = [0]
        else:
            heads = self._pick("head", head, list(range(lay.heads)))
        pad = isinstance(token, str) and token.strip().lower() in ("padding", "<pad>")
        toks = None if pad else self.resolve(token, uncond)
        key = ("padding" if pad else "maps") + ("_uncond" if uncond else "")
        acc = None
        for s in steps:
            arrays = self.step_arrays(s)
            if key not in arrays:
                if uncond:
                    raise PaikError("this bundle has no unconditional maps (generate with --capture-uncond)")
                raise PaikError(f"this bundle's step {s} has no {key} tensor")
            if pad:
                a = arrays[key][np.ix_(blocks, heads)].astype(np.float32)
            else:  # sum the phrase's pieces in float32: fp16 sums would round
                a = arrays[key][np.ix_(blocks, heads, toks)].astype(np.float32).sum(2)
            a = a.reshape(-1, *lay.latent)  # [blocks*heads, F', H', W']
            part = a.max(0) if reduce == "max" else a.sum(0)
            acc = part if acc is None else (np.maximum(acc, part) if reduce == "max" else acc + part)
        if reduce == "mean":
            acc /= len(steps) * len(blocks) * len(heads)
        return acc

    def _pick(self, name: str, value, available: list[int]) -> list[int]:
        return indices.pick(value, available, name)

    # -- summary -------------------------------------------------------------------------------
    def summary(self) -> str:
        m, lay = self.manifest, self.layout
        s = m.get("settings") or {}
        model = m.get("model") or {}
        f, h, w = lay.latent
        heads = f"mean of {lay.n_heads}" if lay.head_mean else str(lay.heads)
        planned = m.get("planned_steps") or lay.steps
        size = 0
        for info in self.steps:
            try:
                size += sum(os.stat(self.path / f).st_size for f in info.shards or (info.file,))
            except OSError:
                pass  # listed under "broken"
        status = {"running": "running, or stopped without closing"}.get(self.status, self.status)
        if self.broken:
            status = f"BROKEN: {len(self.broken)} of {len(self.steps)} step files fail checks; recorded as {status}"
        lines = [
            f"bundle   {self.path}  ({status}, {size / 1024**3:.2f} GiB of maps)",
            f"prompt   {m.get('prompt', '')!r}",
            f"negative {m.get('negative_prompt', '')!r}" if m.get("negative_prompt") else None,
            f"model    {model.get('id', '?')}  ({model.get('family', '?')})",
            f"video    {s.get('frames')} frames {s.get('width')}x{s.get('height')} @ {s.get('fps')} fps, "
            f"{s.get('steps')} steps, guidance {s.get('guidance')}, seed {m.get('seed')}",
            f"maps     [step {len(self.steps)}/{len(planned)}, block {len(lay.blocks)}, head {heads}, "
            f"token {len(lay.tokens)}, F' {f}, H' {h}, W' {w}] {lay.dtype}",
            f"steps    {index_ranges(self.step_indices) or 'none complete'}"
            + (f"  (experts: {_experts(self.steps)})" if len({x.expert for x in self.steps}) > 1 else ""),
            f"blocks   {index_ranges(lay.blocks)}",
            "tokens   " + "  ".join(
                f"{t.index}:{t.piece}{'*' if t.index in self._token_pos else ''}" for t in self.tokens),
            "         (* captured)",
        ]
        groups = m.get("groups") or []
        if groups:
            lines.append("words    " + ", ".join(f"{g['query']!r} -> {g['tokens']}" for g in groups))
        video = self.video_path
        lines.append(f"file     {video}" if video else "file     no video (the run did not finish)")
        for step, why in self.broken.items():
            lines.append(f"broken   step {step}: {why}")
        return "\n".join(x for x in lines if x is not None)


def _experts(steps: Iterable[StepInfo]) -> str:
    out: dict[str, list[int]] = {}
    for s in steps:
        out.setdefault(s.expert, []).append(s.index)
    return "; ".join(f"{k} {index_ranges(v)}" for k, v in out.items())


def open_bundle(path: str | os.PathLike, strict: bool = True) -> Bundle:
    """Open a bundle directory lazily (the manifest and step-file headers are checked, the maps
    are not read). Raises :class:`BundleError` with a clear message for a missing, truncated,
    corrupt or foreign bundle; with ``strict=False`` damaged step files are only listed in
    ``Bundle.broken``."""
    return Bundle(path, strict)
