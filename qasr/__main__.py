from qasr.cli import main

raise SystemExit(main())
