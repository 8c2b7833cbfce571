"""Observability helpers for development: rendering our Grafana dashboards without Grafana."""
