"""Celery side of the captioning service: the app (`workers.app`) and its thin tasks (`workers.tasks`)."""
