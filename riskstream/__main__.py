from riskstream.cli import main

raise SystemExit(main())
