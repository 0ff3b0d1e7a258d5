"""A Django database backend: PostgreSQL whose user and password live in a rotating secret
(``ENGINE = "fma_service.rds"``, ``SECRET_ARN`` in the database settings; see ``base``)."""
