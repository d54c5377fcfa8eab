"""Runbook step logic, one module per step family; Prefect tasks in tasks/ wrap these."""
