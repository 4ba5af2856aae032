"""``python -m nnlab.cli``: the same as the ``nnlab`` command."""

import sys

from . import main

sys.exit(main())
