"""Date and time formats for the pages Django formats itself (the admin): ISO order, with the zone.

``settings.FORMAT_MODULE_PATH`` points here; without it the admin shows "Dec. 6, 2026, 2:46 a.m."
and never says in which zone.
"""
