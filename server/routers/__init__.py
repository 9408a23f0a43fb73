"""API routers by resource."""
