"""``python -m reconciler``: the same CLI as the ``reconciler`` command."""

import sys

from reconciler.cli import main

sys.exit(main())
