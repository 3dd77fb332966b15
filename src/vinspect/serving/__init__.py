"""The inspection service: HTTP API (FastAPI), operator page, inspection log (SQLAlchemy), heatmaps.

``vinspect serve MODEL_DIR`` runs it; :func:`vinspect.serving.app.create_app` builds the application
around a :class:`vinspect.serving.app.Service`.  Imports here stay light: FastAPI, SQLAlchemy and torch
load only when a service is built.
"""
