from covidct.cli.main import main

raise SystemExit(main())
