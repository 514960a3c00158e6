"""A FastAPI app on nerfcache: see app.py."""
