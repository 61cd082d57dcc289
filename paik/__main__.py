"""``python -m paik`` is the ``paik`` command."""

import sys

from paik.cli import main

sys.exit(main())
