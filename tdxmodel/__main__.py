import sys

from tdxmodel.cli import main

sys.exit(main())
