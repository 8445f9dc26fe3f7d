"""Korean morpheme tokenization for caption metrics (Kiwi, Java-free).

Every metric in the evaluation works on the same morpheme sequences, produced here:
NFC-normalised text -> Kiwi morphemes -> lower-cased forms, punctuation dropped.
Each distinct text is analysed once per process; Kiwi is slow compared with the
metrics themselves, so the cache is what keeps evaluation fast.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable
from typing import Any

# Kiwi tags for punctuation and symbols (Sejong tag set as extended by Kiwi):
# SF . ! ?   SP , / : ;   SS/SSO/SSC quotes and brackets   SE ellipsis
# SO hyphen/tilde   SW other symbols. Letters (SL), hanja (SH) and numbers (SN) are kept.
PUNCT_TAGS: frozenset[str] = frozenset({"SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW"})

Tokens = tuple[str, ...]


def normalize_text(text: str) -> str:
    """NFC-normalise and trim a caption; NFD Hangul (e.g. from macOS) would not match NFC."""
    return unicodedata.normalize("NFC", text).strip()


class MorphemeTokenizer:
    """Kiwi morpheme tokenizer with a per-text cache.

    Kiwi's default model and options are used; they are recorded by :meth:`config` so a
    report states exactly which analysis produced its numbers.
    """

    def __init__(self, num_workers: int | None = None) -> None:
        from kiwipiepy import Kiwi  # imported here: loading the model takes ~2 s

        self._kiwi = Kiwi(num_workers=num_workers)
        self._cache: dict[str, Tokens] = {}

    def config(self) -> dict[str, Any]:
        """Describe the tokenizer precisely enough to reproduce the tokens."""
        import kiwipiepy
        import kiwipiepy_model

        return {
            "name": "kiwipiepy",
            "version": kiwipiepy.__version__,
            "model_version": kiwipiepy_model.__version__,
            "model_type": self._kiwi.model_type,
            "integrate_allomorph": self._kiwi.integrate_allomorph,
            "typo_correction": False,
            "unit": "morpheme surface form (Kiwi Token.form)",
            "normalization": "NFC",
            "lowercase": True,
            "dropped_tags": sorted(PUNCT_TAGS),
        }

    def tokenize(self, text: str) -> Tokens:
        """Morphemes of one text (cached)."""
        return self.tokenize_many([text])[text]

    def tokenize_many(self, texts: Iterable[str]) -> dict[str, Tokens]:
        """Morphemes for many texts, keyed by the original text.

        Texts not seen before are analysed in one Kiwi batch call, which spreads the work
        over Kiwi's worker threads.
        """
        wanted = list(dict.fromkeys(texts))
        todo = [t for t in wanted if t not in self._cache]
        normalized = [normalize_text(t) for t in todo]
        # Kiwi rejects nothing, but empty strings carry no tokens: skip the call for them.
        to_analyse = [n for n in dict.fromkeys(normalized) if n]
        analysed: dict[str, Tokens] = {"": ()}
        if to_analyse:
            for norm, tokens in zip(to_analyse, self._kiwi.tokenize(to_analyse), strict=True):
                analysed[norm] = tuple(
                    tok.form.lower() for tok in tokens if tok.tag not in PUNCT_TAGS
                )
        for text, norm in zip(todo, normalized, strict=True):
            self._cache[text] = analysed[norm]
        return {t: self._cache[t] for t in wanted}


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> MorphemeTokenizer:
    """The process-wide tokenizer (the Kiwi model is loaded once)."""
    return MorphemeTokenizer()
