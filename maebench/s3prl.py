"""`python -m maebench.s3prl ARGS`: s3prl's legacy downstream runner with maebench upstreams registered.

The launcher lives in `maebench.s3prl_runner`; this module only keeps the documented command working.
"""

import sys

from maebench.s3prl_runner import main

if __name__ == "__main__":
    sys.exit(main())
