from engram_cli.app import main

raise SystemExit(main())
