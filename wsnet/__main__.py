import sys

from wsnet.cli import main

sys.exit(main())
