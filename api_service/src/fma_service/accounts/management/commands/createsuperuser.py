"""Django's ``createsuperuser``, which with ``--noinput`` also applies the password rules
(``AUTH_PASSWORD_VALIDATORS``) to ``DJANGO_SUPERUSER_PASSWORD``: Django checks them only when it
asks for the password, and the non-interactive way is how the quickstart, Lambda's ``manage``
event and scripts make accounts."""

from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.management.commands import createsuperuser
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError


class Command(createsuperuser.Command):
    def handle(self, *args: Any, **options: Any) -> None:
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        if not options["interactive"] and password:
            user_model = get_user_model()
            username = options.get(user_model.USERNAME_FIELD) or os.environ.get(
                f"DJANGO_SUPERUSER_{user_model.USERNAME_FIELD.upper()}", ""
            )
            try:
                password_validation.validate_password(
                    password, user_model(**{user_model.USERNAME_FIELD: username})
                )
            except ValidationError as error:
                raise CommandError("DJANGO_SUPERUSER_PASSWORD: " + " ".join(error.messages)) from None
        super().handle(*args, **options)
