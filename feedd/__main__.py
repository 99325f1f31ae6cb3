import sys

from feedd.cli import main

sys.exit(main())
