import sys

from transmamba.cli import main

sys.exit(main())
