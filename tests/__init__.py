"""Test suite for soulgate."""
