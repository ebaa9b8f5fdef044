from gsm8k_tr.cli import main

raise SystemExit(main())
