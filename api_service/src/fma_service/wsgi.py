"""WSGI entry point: the Lambda function (Zappa) calls it, and ``fma_service.asgi`` serves it with uvicorn."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fma_service.settings")
application = get_wsgi_application()
