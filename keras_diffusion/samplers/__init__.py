"""Samplers: see DESIGN.md for the contract."""
