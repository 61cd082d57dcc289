"""A bundle as the instrument sees it: the words a performer can pick, the counts that bound
the parameters, and the reducer that turns a selection into volumes."""

from __future__ import annotations

from dataclasses import dataclass

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
    def __init__(self, bundle: Bundle, device: str = "auto"):
        self.bundle = bundle
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
