"""Deployment entry point of the service: `celery -A workers.app ...` (see `workers.app`)."""
