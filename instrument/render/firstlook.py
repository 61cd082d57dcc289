"""What a bundle shows when the performer has chosen nothing yet: ``paik play``, ``render`` and
``grid`` with no flags.

- the word: the prompt's first content word ("red" in "a red kiss"): not an article or a
  preposition (a small stop-word list), and never EOS, which draws much of the attention and
  localizes nothing;
- the step: the last captured one (step 0 is pure noise; the last is the picture that was made);
- the block: the captured block whose map agrees best with the mean over all blocks (at the last
  step, mean over heads, the chosen word). The mean over blocks is the robust map (it is what
  DAAM aggregates), but the views that show one block (single, sweep, grids of steps) need one,
  and every block fader must still work: the block closest to the consensus shows what the mean
  shows, sharply, and never a block whose map is an outlier (flat, or attending its own corner).
"""

from __future__ import annotations

import numpy as np

from paik.instrument.render.reduce import Selection

# words of a prompt that carry no object of their own (English: Wan's prompts and the shapes world)
STOP_WORDS = frozenset("""
a an the this that these those some any each every its his her their our my your
and or but nor so yet as than then
of in on at to into onto over under above below across along around through by with without from for
about after before behind between near while during up down out off
is are was were be been being has have had do does did
it they he she we you i there here very just also
""".split())


def content_word(words: list[str], specials: set[str] = frozenset()) -> int:
    """Index of the first word that names something: not a stop word, not punctuation, not a
    special token (EOS); the first non-special word if every word is a stop word; else 0."""
    def plain(w: str) -> str:
        return w.strip("▁").strip(".,;:!?\"'()[]").lower()

    ordinary = [i for i, w in enumerate(words) if w not in specials and not (w.startswith("<") and w.endswith(">"))]
    for i in ordinary:
        p = plain(words[i])
        if p and p not in STOP_WORDS and any(c.isalnum() for c in p):
            return i
    return ordinary[0] if ordinary else 0


def representative_block(src, tokens: tuple[int, ...], step: int) -> int:
    """Position (among the captured blocks) of the block whose map of ``tokens`` at step position
    ``step`` (mean over heads) correlates best with the mean over blocks."""
    n = src.dims.n_blocks
    if n < 2:
        return 0
    sel = Selection(tuple(tokens), (int(step),), tuple(range(n)), None, ("block",), "mean")
    vols = np.asarray(src.reducer.volumes(sel), np.float64).reshape(n, -1)  # [block, F'*H'*W']
    dev = vols - vols.mean(1, keepdims=True)
    mean = dev.mean(0)
    denom = np.linalg.norm(dev, axis=1) * np.linalg.norm(mean)
    corr = np.where(denom > 0, dev @ mean / np.maximum(denom, 1e-300), -np.inf)
    return int(np.argmax(corr)) if np.isfinite(corr).any() else 0
