"""Caption-quality evaluation: Korean-morpheme METEOR and friends, and the HTML report.

- `references`: read reference captions (JSONL, CSV, AI-Hub label folders).
- `morphemes`: Kiwi morphemes, each text tokenized once.
- `scores`: METEOR (NLTK, exact matches), BLEU-4, ROUGE-L, CIDEr-D, diversity guards.
- `report`: the self-contained report.html.
- `run`: `run_eval`, what `captioner eval` calls.
"""
