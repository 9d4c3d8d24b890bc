import sys

from vasticlaude.cli import main

sys.exit(main())
