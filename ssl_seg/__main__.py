from ssl_seg.cli import main

raise SystemExit(main())
