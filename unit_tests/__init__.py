"""Tests without real processes: functions, transforms on Beam's local runner, fakeredis.

May import anything in the product and ``scenarios``; nothing imports the tests.
"""
