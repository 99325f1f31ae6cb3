import sys

from feedd.cli.main import main

sys.exit(main())
