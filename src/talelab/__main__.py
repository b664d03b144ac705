from talelab.cli import main

raise SystemExit(main())
