from kvmharness.cli import main

raise SystemExit(main())
