"""Pulse: multi-tenant product analytics backend."""
