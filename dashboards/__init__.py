"""Grafana dashboards and Prometheus alert rules for fastapi-doctor, generated from one source.

``config.py`` holds everything a deployment may change (selectors, thresholds, windows, dashboard
UIDs, the runbook URL pattern); ``overview.py`` builds the dashboard with grafana-foundation-sdk,
``alerts.py`` the rule groups, ``pathologies.py`` the synthetic series of the promtool unit tests.
``python -m dashboards.build`` (``make dashboards``) writes the generated files, which are committed.
"""
