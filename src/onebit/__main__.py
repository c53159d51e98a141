"""``python -m onebit`` (also what ``torchrun -m onebit`` runs)."""

import os
import sys

from onebit.cli import main

# `python -m` put the current directory first on sys.path; `onebit` searches it only for the
# modules named with --import (onebit.user_code), as the `onebit` script does
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]
sys.exit(main())
