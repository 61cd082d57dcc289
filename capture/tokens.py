"""The prompt's token table: umT5 pieces mapped to the words a performer types.

umT5 splits a prompt into sentencepiece pieces; a piece that starts a word carries a leading
"▁", a word may span several pieces ("kissing" -> "▁kiss", "ing") and the prompt always ends with
the EOS piece "</s>", which is a real key in the cross-attention too. Users choose words and
phrases ("kiss", "soccer ball"), never piece indices, so every piece is assigned to the word of
the prompt it came from, using the fast tokenizer's character offsets.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from paik.errors import PaikError

# Words and standalone punctuation: "soccer", "ball", ",", "don't", "x-ray".
_WORD_RE = re.compile(r"\w+(?:['’\-]\w+)*|[^\w\s]")


@dataclass(frozen=True)
class Token:
    """One real token of the prompt (one key of the cross-attention)."""

    index: int  # position in the prompt's token sequence (= key index in attn2)
    id: int  # tokenizer id
    piece: str  # sentencepiece piece, e.g. "▁kiss"
    word: str  # the prompt word it belongs to, e.g. "kissing"; "</s>" for EOS
    word_index: int  # index of that word among the prompt's words
    special: bool  # EOS and other special tokens

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TokenGroup:
    """What a user asked for: a word or phrase and the token indices that spell it."""

    query: str
    tokens: tuple[int, ...]

    def to_json(self) -> dict:
        return {"query": self.query, "tokens": list(self.tokens)}


def clean_prompt(text: str) -> str:
    """The exact cleaning WanPipeline applies before tokenizing, so our table matches its keys."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    return prompt_clean(text)


def token_table(tokenizer, prompt: str, max_sequence_length: int = 512) -> list[Token]:
    """Tokenize ``prompt`` exactly as WanPipeline does and assign each real piece to a word.

    ``prompt`` must already be cleaned (:func:`clean_prompt`)."""
    enc = tokenizer(
        prompt,
        max_length=max_sequence_length,
        truncation=True,
        add_special_tokens=True,
        return_offsets_mapping=True,
    )
    ids = list(enc["input_ids"])
    offsets = list(enc["offset_mapping"])
    pieces = tokenizer.convert_ids_to_tokens(ids)
    special_ids = set(tokenizer.all_special_ids)
    words = [(m.start(), m.end(), m.group()) for m in _WORD_RE.finditer(prompt)]

    table: list[Token] = []
    next_word_index = len(words)
    for i, (tid, piece, (a, b)) in enumerate(zip(ids, pieces, offsets)):
        if tid in special_ids:
            table.append(Token(i, tid, piece, piece, next_word_index, True))
            next_word_index += 1
            continue
        # the word overlapping the piece most; a bare "▁" (no text of its own) joins the next word
        best, best_overlap = None, 0
        for w, (s, e, _) in enumerate(words):
            overlap = min(b, e) - max(a, s)
            if overlap > best_overlap:
                best, best_overlap = w, overlap
        if best is None:
            best = next((w for w, (s, _, _) in enumerate(words) if s >= a), len(words) - 1)
        table.append(Token(i, tid, piece, words[best][2] if words else piece, max(best, 0), False))
    return table


def prompt_words(table: list[Token]) -> list[str]:
    """The prompt's words in order (EOS included), for messages and displays."""
    seen: dict[int, str] = {}
    for t in table:
        seen.setdefault(t.word_index, t.word)
    return [seen[k] for k in sorted(seen)]


def _norm(word: str) -> str:
    return word.lower().strip()


def resolve_tokens(table: list[Token], queries: list[str]) -> list[TokenGroup]:
    """Turn the user's ``--tokens`` into token groups.

    A query is a word ("kiss"), a phrase of consecutive words ("soccer ball"), ``eos`` or
    ``</s>`` for the end token, ``#N`` for the N-th piece, and may end in ``@K`` to pick the K-th
    occurrence (default: the first). Matching ignores case.
    """
    words = prompt_words(table)
    by_word: dict[int, list[int]] = {}
    for t in table:
        by_word.setdefault(t.word_index, []).append(t.index)
    groups: list[TokenGroup] = []
    for raw in queries:
        q = raw.strip()
        if not q:
            continue
        if q.startswith("#"):
            try:
                idx = int(q[1:])
            except ValueError:
                raise PaikError(f"token {raw!r}: '#' must be followed by a piece index, like #3") from None
            if not 0 <= idx < len(table):
                raise PaikError(f"token {raw!r}: the prompt has {len(table)} pieces (#0..#{len(table) - 1})")
            groups.append(TokenGroup(raw, (idx,)))
            continue
        occurrence = 1
        m = re.fullmatch(r"(.*?)@(\d+)", q)
        if m:
            q, occurrence = m.group(1).strip(), int(m.group(2))
        if _norm(q) in ("eos", "</s>"):
            eos = [t.index for t in table if t.special]
            if not eos:
                raise PaikError("the prompt has no EOS token (it was cut at max_sequence_length)")
            groups.append(TokenGroup(raw, (eos[-1],)))
            continue
        target = [_norm(w) for w in _WORD_RE.findall(q)]
        hits = [
            start
            for start in range(len(words) - len(target) + 1)
            if [_norm(w) for w in words[start : start + len(target)]] == target
        ]
        if not target or len(hits) < occurrence:
            listing = " ".join(w for w in words)
            what = "is not in the prompt" if not hits else f"occurs only {len(hits)} time(s)"
            raise PaikError(f"token {raw!r} {what}. The prompt's words are: {listing}")
        start = hits[occurrence - 1]
        idxs = tuple(i for w in range(start, start + len(target)) for i in by_word[w])
        groups.append(TokenGroup(raw, idxs))
    return groups


def split_token_list(text: str) -> list[str]:
    """Split ``kiss,"soccer ball",eos`` into queries; quotes protect commas inside a phrase."""
    import csv

    return [s.strip() for row in csv.reader([text], skipinitialspace=True) for s in row if s.strip()]
