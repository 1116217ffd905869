"""``python -m nncompress.cli``: the same as the ``nncompress`` command."""

import sys

from nncompress.cli import main

sys.exit(main())
