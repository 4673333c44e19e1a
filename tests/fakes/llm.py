"""The fake OpenAI-compatible LLM server; it lives in the shipped test kit (``gateway.testing.fake_llm``)
so plugin authors can use it too. Re-exported here beside the other platform fakes.
"""

from gateway.testing.fake_llm import *  # noqa: F403
from gateway.testing.fake_llm import __all__ as __all__
