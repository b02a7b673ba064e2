from kvmharness.entry import main

raise SystemExit(main())
