import sys

from strokessl.cli import main

sys.exit(main())
