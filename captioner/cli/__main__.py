"""`python -m captioner.cli`."""

from captioner.cli import main

main()
