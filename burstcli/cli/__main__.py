"""`python -m burstcli.cli`: the same as the `burstq` console script."""

from . import main

main()
