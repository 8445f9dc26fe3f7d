"""Synthetic H.264 clips (PyAV) with Korean reference captions: samples, tests, benchmark, training.

No footage can be downloaded, so clips are drawn. `vocabulary` says what a clip shows (a
`SceneSpec`: scene family, time of day, weather, direction of the moving object) and builds its
captions from those attributes alone; `painter` draws the frames so each attribute is visible at
the demo model's 64x64 input; `encoding` writes clips, reference files and the bundled samples.
`python -m captioner.demo.scenes samples/` redraws the samples.
"""

from captioner.demo.scenes.encoding import (
    LABELLED_CRF,
    SAMPLE_SPECS,
    regenerate_samples,
    write_clip,
    write_clips,
    write_labelled_clips,
    write_references,
    write_scene,
)
from captioner.demo.scenes.painter import Painter
from captioner.demo.scenes.vocabulary import (
    CATEGORIES,
    DIRECTIONS,
    FAMILIES,
    HELDOUT_SEED_BASE,
    SAMPLE_SEED_BASE,
    SCENES,
    TIMES,
    WEATHERS,
    SceneSpec,
    random_spec,
    references,
)

__all__ = [
    "CATEGORIES",
    "DIRECTIONS",
    "FAMILIES",
    "HELDOUT_SEED_BASE",
    "LABELLED_CRF",
    "SAMPLE_SEED_BASE",
    "SAMPLE_SPECS",
    "SCENES",
    "TIMES",
    "WEATHERS",
    "Painter",
    "SceneSpec",
    "random_spec",
    "references",
    "regenerate_samples",
    "write_clip",
    "write_clips",
    "write_labelled_clips",
    "write_references",
    "write_scene",
]
