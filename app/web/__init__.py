"""HTTP in: thin Starlette endpoints (webhooks, connect, API, dashboard)."""
