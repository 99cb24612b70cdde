"""``python -m sds_plugins``: the same as the ``sds-plugins`` command."""

from ._tools._cli import main

main()
