from __future__ import annotations

import sys

from memdiag.cli import main

sys.exit(main())
