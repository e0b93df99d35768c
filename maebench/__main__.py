import sys

from maebench.cli import main

sys.exit(main())
