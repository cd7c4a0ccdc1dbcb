"""Pallets: the identity register and its queries."""
