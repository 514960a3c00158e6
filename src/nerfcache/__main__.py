"""``python -m nerfcache``: the same as the ``nerfcache`` command."""

from nerfcache.cli import main

main()
