"""Caption-quality evaluation: Korean-morpheme METEOR and friends, and the HTML report.

- `references`: read reference captions (JSONL, CSV; `aihub`: AI-Hub label folders; `inputs`: what
  they share: the input error, size limits, an entry as read).
- `spans`: time ranges of references, and which window of a long take a range scores.
- `matching`: which references each evaluated record (a whole file or a window) is scored against.
- `morphemes`: Kiwi morphemes, each text tokenized once.
- `scores`: METEOR (NLTK, exact matches), BLEU-4, ROUGE-L, CIDEr-D, diversity guards.
- `report`: the self-contained report.html.
- `results`: the data types: `CaptionSet`, `ScoredCaptions`, `Evaluation` (below all the others).
- `captions`: the caption records to evaluate, read strictly from an output folder or captions file.
- `scoring`: per-clip scores, the summary, and the paired comparison with a baseline.
- `command`: `run_eval`, what `captioner eval` calls: outputs, console lines, the regression gate.
"""
