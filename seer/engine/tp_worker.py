"""``python -m seer.engine.tp_worker``: one tensor-parallel rank > 0 (see ``seer.engine.parallel``)."""

import sys

from seer.engine.parallel import worker_main

if __name__ == "__main__":
    sys.exit(worker_main())
