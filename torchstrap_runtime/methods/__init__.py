"""Representation-learning methods, one module each: its criterion, heads, views and recipes together."""
