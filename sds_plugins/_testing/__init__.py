"""The helpers behind :mod:`sds_plugins.testing`, which re-exports them: import them from there.

Nothing here imports pytest, the sandbox or the router: pytest loads ``sds_plugins.testing`` in
every session of every project that has sds-plugins installed.
"""
