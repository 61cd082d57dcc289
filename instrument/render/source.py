"""A bundle as the instrument sees it: the words a performer can pick, the counts that bound
the parameters, and the reducer that turns a selection into volumes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from paik.capture.bundle import Bundle, open_bundle
from paik.errors import PaikError
from paik.capture.tokens import TokenGroup

from paik.instrument.render.reduce import Reducer
from paik.instrument.render.views import Dims


@dataclass(frozen=True)
class Word:
    label: str  # as shown and typed ("kiss", "</s>")
    positions: tuple[int, ...]  # on the captured token axis (pieces summed)


class Source:
    _twin: "Source | None" = None
    _twin_known = False  # whether _twin was set or the recorded twin looked up
    twin_error: str | None = None  # why the recorded twin could not be opened

    def __init__(self, bundle: Bundle, device: str = "auto"):
        self.bundle = bundle
        self.device = device
        lay = bundle.layout
        if not bundle.step_indices:
            raise PaikError(f"{bundle.path}: no complete steps yet; nothing to show")
        self.words = self._captured_words()
        if not self.words:
            raise PaikError(f"{bundle.path}: no prompt words were captured")
        s = bundle.manifest.get("settings", {})
        f, h, w = lay.latent
        width, height = int(s.get("width") or w * 16), int(s.get("height") or h * 16)
        self.video_size = (width, height)
        self.fps = float(s.get("fps") or 16)
        self.frames = int(s.get("frames") or (f - 1) * 4 + 1)
        self.dims = Dims(len(bundle.step_indices), len(lay.blocks), lay.heads, tuple(bundle.step_indices),
                         tuple(lay.blocks), width / height)
        self.reducer = Reducer(bundle, device)

    @classmethod
    def open(cls, path, device: str = "auto") -> "Source":
        return cls(open_bundle(path), device)

    def _captured_words(self) -> list[Word]:
        by_word: dict[int, list[int]] = {}
        label: dict[int, str] = {}
        for t in self.bundle.tokens:
            by_word.setdefault(t.word_index, []).append(t.index)
            label.setdefault(t.word_index, t.word)
        out = []
        for wi in sorted(by_word):
            try:
                pos = self.bundle.resolve(TokenGroup(label[wi], tuple(by_word[wi])))
            except PaikError:
                continue  # not captured
            out.append(Word(label[wi], tuple(pos)))
        return out

    def word_index(self, token: str) -> int:
        """Index in :attr:`words` of a word, phrase, ``#N`` or ``eos`` the user typed."""
        try:
            pos = tuple(self.bundle.resolve(token))
        except PaikError as e:
            raise PaikError(f"{e}. Captured words here: {', '.join(w.label for w in self.words)}") from None
        for i, w in enumerate(self.words):
            if w.positions == pos:
                return i
        # a phrase or a single piece of a multi-piece word: add it as its own entry
        self.words.append(Word(str(token), pos))
        return len(self.words) - 1

    def duration(self) -> float:
        return self.frames / self.fps

    @property
    def twin(self) -> "Source | None":
        """The unbent twin of a bent take, for the twin and diff views: the one set here
        (``--twin``, ``paik live``), else the one its manifest records (``paik generate --twin``),
        opened on first use; None when there is none or it cannot be opened (:attr:`twin_error`)."""
        if not self._twin_known:
            self._twin_known = True
            path = recorded_twin(self.bundle)
            if path is not None:
                try:
                    self._twin = Source.open(path, self.device)
                except PaikError as e:
                    self.twin_error = f"the recorded twin {path}: {e}"
        return self._twin

    @twin.setter
    def twin(self, src: "Source | None") -> None:
        self._twin, self._twin_known = src, True


def recorded_twin(bundle) -> Path | None:
    """The twin a bent bundle's manifest names (``"twin": {"path": ..., "role": "bent"}``, the
    path relative to the bundle), or None."""
    rec = (getattr(bundle, "manifest", None) or {}).get("twin")
    if not isinstance(rec, dict) or rec.get("role") != "bent" or not isinstance(rec.get("path"), str):
        return None
    return Path(bundle.path) / rec["path"]


def twin_mismatch(bent: Source, unbent: Source) -> str | None:
    """Why ``unbent`` cannot be shown as ``bent``'s twin (one line), or None when the two have the
    same layout: captured tokens, steps, blocks, heads and latent size."""
    a, b = bent.bundle, unbent.bundle
    la, lb = a.layout, b.layout
    pieces = lambda bundle: [bundle.tokens[i].piece for i in bundle.layout.tokens if i < len(bundle.tokens)]
    for what, x, y in (("latent size F'xH'xW'", tuple(la.latent), tuple(lb.latent)),
                       ("captured tokens", pieces(a), pieces(b)), ("steps", list(la.steps), list(lb.steps)),
                       ("blocks", list(la.blocks), list(lb.blocks)), ("heads", la.heads, lb.heads)):
        if x != y:
            def show(v):
                text = "x".join(map(str, v)) if what.startswith("latent") else str(v)
                return text if len(text) <= 40 else text[:37] + "..."
            return (f"twin {Path(b.path).name} does not match {Path(a.path).name}: {what} {show(y)} vs {show(x)}; "
                    "a twin is the same take unbent (make one with 'paik generate --replay BENT --no-bends --out DIR')")
    return None
