"""Pages with ``count``, ``next`` and ``previous``: the original returned a bare list with no totals."""

from rest_framework.pagination import PageNumberPagination


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
