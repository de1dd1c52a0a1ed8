import sys

from tritonvision.cli import main

sys.exit(main())
