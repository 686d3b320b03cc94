import sys

from index_builder.build import main

sys.exit(main())
