"""Channel adapters, each a pluggy plugin registering through ``soulgate_adapters``."""
