"""The toy engine with one bug on: ``supports_kw``'s lru_cache keeps the model alive.

    python examples/leaky_lru_cache.py [--device cpu|cuda|auto] [--fixed]

Runs ``toy_engine.main`` with ``--bug lru_cache``; as the engine is imported rather than run
as ``__main__``, a leak report names ``toy_engine.supports_kw``. See README.md.
"""

from __future__ import annotations

import sys

from toy_engine import main

if __name__ == "__main__":
    sys.exit(main(["--bug", "lru_cache", *sys.argv[1:]]))
