"""Bundled skill plugins, loaded through the same manager as third-party plugins."""
