import sys

from budgetnet.cli import main

sys.exit(main())
