"""Entry point of the service's Celery app: `celery -A workers.app worker|beat|flower`.

The app and its tasks are the library's (`captioner.service.celery_app`, `captioner.service.tasks`);
this module only builds the app from the environment (`CAPTIONER_*`, or `CAPTIONER_CONFIG`).
"""

from __future__ import annotations

from captioner.config import Settings
from captioner.escaping import install_log_escaping
from captioner.service.celery_app import app_for, celery_config

install_log_escaping()  # file names with control characters never reach a log raw
settings = Settings()
app = app_for(settings)
app.set_current()

__all__ = ["app", "celery_config", "settings"]
