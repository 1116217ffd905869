"""``python -m nncompress`` runs the CLI."""

import sys

from nncompress.cli import main

sys.exit(main())
