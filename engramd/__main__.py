from engramd.main import main

raise SystemExit(main())
