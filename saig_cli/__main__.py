"""``python -m saig_cli`` (and ``torchrun -m saig_cli train ...``): the ``saig`` command."""
import sys

from saig_cli.main import main

sys.exit(main())
