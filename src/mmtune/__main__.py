"""``python -m mmtune`` (what ``torchrun -m mmtune`` runs)."""

import sys

from mmtune.cli import main

sys.exit(main())
