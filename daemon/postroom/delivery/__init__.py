"""Outbound delivery: transports (smarthost, capture; direct MX later), reply classification,
and the worker that claims due deliveries and releases them with their outcomes.
"""
