from napari_rrim_sr.cli.main import main

raise SystemExit(main())
