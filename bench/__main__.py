import sys

from .run_all import main

sys.exit(main(sys.argv[1:]))
