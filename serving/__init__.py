"""REST serving (FastAPI); the routes arrive with the serving issue."""
