"""django-prometheus's request metrics, kept from turning a malformed request into a server error."""

from __future__ import annotations

from django.http import HttpRequest
from django_prometheus.middleware import PrometheusAfterMiddleware
from django_prometheus.utils import Time


class RequestMetricsMiddleware(PrometheusAfterMiddleware):
    """``PrometheusAfterMiddleware``, except for a request whose ``Content-Length`` is not a number:
    django-prometheus reads it with ``int()`` to observe the body's size and raises, which would
    answer 500 where the view answers 400 saying what is wrong. Such a request is counted without
    its body size (every count before that observation is already made) and timed as any other."""

    def process_request(self, request: HttpRequest) -> None:
        try:
            super().process_request(request)
        except ValueError:
            request.prometheus_after_middleware_event = Time()
