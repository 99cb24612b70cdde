"""Local imitation of NHS England's SDS FHIR API; the public face is ``sds_plugins.sandbox``.

It is tooling (tests, demos, measurements), not routing: its web stack is the ``sandbox`` extra,
so a deployment that only routes does not carry a web server it never runs.
"""

import importlib.util

_MISSING = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
if _MISSING:
    raise ModuleNotFoundError(
        f"the SDS sandbox needs {' and '.join(_MISSING)}: pip install 'sds-plugins[sandbox]'",
        name=_MISSING[0],
    )
