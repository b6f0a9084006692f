"""``python -m ddk_fast.cli ...`` (and ``torchrun -m ddk_fast.cli ...``) runs ``ddk-fast``."""
import sys

from ddk_fast.cli import main

sys.exit(main())
