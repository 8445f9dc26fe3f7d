"""`python -m captioner.demo.scenes samples/`: redraw the bundled sample clips and their references."""

import sys

from captioner.demo.scenes.encoding import regenerate_samples

for sample in regenerate_samples(sys.argv[1] if len(sys.argv) > 1 else "samples"):
    print(sample)
