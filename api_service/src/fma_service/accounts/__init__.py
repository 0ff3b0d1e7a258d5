"""Accounts: what FMA adds to Django's users (password rules for ``createsuperuser --noinput``)."""
