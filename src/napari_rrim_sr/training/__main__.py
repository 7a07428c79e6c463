import sys

from napari_rrim_sr.training.cli import main

sys.exit(main())
