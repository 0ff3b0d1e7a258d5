"""The v1 REST API (DRF): thin views over ``fma_django.services`` and ``fma_django.selectors``."""
