"""python -m vaebm_fast ... is the vaebm-fast command."""
import sys

from .cli import main

sys.exit(main())
