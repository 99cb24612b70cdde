"""``sds-plugins serve``: the routing engine as an HTTP service (starlette on uvicorn)."""
