from metering.cli import main

raise SystemExit(main())
