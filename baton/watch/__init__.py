"""Continuous protection: the watch samples each flow, judges readiness, serves metrics, alerts."""
