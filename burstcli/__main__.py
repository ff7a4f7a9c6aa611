"""`python -m burstcli`: the same as the `burstq` console script."""

from .cli import main

main()
