"""``python -m onebit`` (also what ``torchrun -m onebit`` runs)."""

import sys

from onebit.cli import main

sys.exit(main())
